//! A real systemd to test against: a Debian container booted with `systemd-nspawn`.
//!
//! The agent's `systemd` control mode (and, later, its own unit: `Type=notify`, `READY=1`, the
//! watchdog) can only be proven against a real systemd as PID 1. Test machines run as root but
//! not under systemd, so [`Container::boot`] boots one: a Debian root file system, built once by
//! `scripts/nspawn-rootfs` and cached under `target/nspawn/`, started with
//!
//! ```text
//! systemd-nspawn --directory ROOTFS --volatile=overlay --boot --register=no --keep-unit \
//!     --machine NAME --console=passive --bind=SHARE:/hd
//! ```
//!
//! - `--volatile=overlay` keeps the cached tree read-only under a tmpfs overlay: every test
//!   starts from the same pristine system, and nothing it does survives it.
//! - `--register=no --keep-unit` need neither systemd-machined nor a host systemd.
//! - There is no `--private-network`: the container shares the host's network namespace, so
//!   what runs inside reaches (and is reached on) the harness's 127.x addresses.
//! - `SHARE` is a host temp dir seen at [`SHARE`] (`/hd`) inside: binaries, artifacts and
//!   configs are put there from the host ([`Container::share_file`]) without copying them into
//!   the container's tmpfs.
//! - Where `/run` is not a tmpfs (nspawn wants one), a tmpfs is mounted at
//!   `/run/systemd/nspawn` first, once, under a lock.
//!
//! Commands run inside through `nsenter --all` into the container's PID 1
//! ([`Container::exec`]), each bounded in time. Units are driven with [`Container::systemctl`]
//! and awaited with [`Container::wait_unit`]; [`Container::journal`] reads a unit's log for
//! failure messages.
//!
//! **Teardown always happens.** Dropping the container (normally or while a test panics)
//! SIGKILLs its PID 1, which ends every process in its PID namespace, and waits for nspawn to
//! exit. A test process that is itself killed cannot run `Drop`, so each container also has a
//! *reaper*: a tiny shell in a process group of its own that holds a pipe from the test and,
//! when the pipe closes (however the test ended), kills the container's PID 1.
//!
//! **When it cannot run** (not root, no debootstrap and no way to install it, no network to
//! build the root file system) [`rootfs`] says why, in plain words; [`Container::boot_or_skip`]
//! prints it and lets the test return, unless `HOTDEPLOY_REQUIRE_NSPAWN` is set (as
//! `scripts/test` does once the root file system is built), where it fails the test instead.
//! Nothing passes silently.
//!
//! [`agent_config`] is the config of the agent such a container's tests run, `web-1`: the
//! same everywhere but for what a test is about (the coordinators, the data_dir, `[tls]`, and
//! whether the agent runs its service itself or through a systemd unit).

use crate::bins;
use crate::net;
use crate::proc::{self, log_tail};
use crate::toml_config::{table, AgentConfigFile};
use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// Where the host's share directory appears inside the container.
pub const SHARE: &str = "/hd";
/// The environment variable that turns "cannot run here" into a test failure.
pub const REQUIRE_ENV: &str = "HOTDEPLOY_REQUIRE_NSPAWN";
/// How long a boot may take until systemd reports the system running.
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);
/// How long building the root file system may take (debootstrap, once).
const BUILD_TIMEOUT: Duration = Duration::from_secs(900);
/// The PATH of commands run inside.
const INSIDE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Why the container tests cannot run on this machine.
#[derive(Debug, Clone)]
pub struct Unavailable(pub String);

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The workspace's `target/` directory.
fn target_dir() -> PathBuf {
    let profile = bins::profile_dir();
    profile.parent().map(Path::to_path_buf).unwrap_or(profile)
}

/// The cached root file system, built by `scripts/nspawn-rootfs` if it is not there yet.
pub fn rootfs() -> Result<PathBuf, Unavailable> {
    if !running_as_root() {
        return Err(Unavailable(
            "systemd-nspawn needs root, and this test runs as an ordinary user".into(),
        ));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/nspawn-rootfs");
    let mut command = Command::new(&script);
    command.arg(target_dir());
    let out = proc::run_with_timeout(command, BUILD_TIMEOUT);
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(Unavailable(if why.is_empty() {
            format!("{} failed: {}", script.display(), out.status)
        } else {
            why
        }));
    }
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !path.join("sbin/init").exists() && !path.join("lib/systemd/systemd").exists() {
        return Err(Unavailable(format!(
            "{} holds no systemd; remove it and run scripts/nspawn-rootfs again",
            path.display()
        )));
    }
    Ok(path)
}

/// Whether this process runs as root (its effective uid, from `/proc/self/status`).
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// nspawn wants `/run` to be a tmpfs; where it is not, mount one at `/run/systemd/nspawn`
/// (once, under a lock, so that two tests booting at once do not stack two).
fn ensure_run_tmpfs() -> Result<(), Unavailable> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let tmpfs_at = |dir: &str| {
        mounts.lines().any(|l| {
            let mut f = l.split_whitespace();
            let (_, at, kind) = (f.next(), f.next(), f.next());
            at == Some(dir) && kind == Some("tmpfs")
        })
    };
    if tmpfs_at("/run") || tmpfs_at("/run/systemd/nspawn") {
        return Ok(());
    }
    let lock = target_dir().join("nspawn/.run-mount.lock");
    if let Some(dir) = lock.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let mut command = Command::new("flock");
    command.arg(&lock).args([
        "sh",
        "-c",
        "mkdir -p /run/systemd/nspawn && { mountpoint -q /run/systemd/nspawn || \
         mount -t tmpfs -o mode=0755 tmpfs /run/systemd/nspawn; }",
    ]);
    let out = proc::run_with_timeout(command, Duration::from_secs(30));
    if out.status.success() {
        Ok(())
    } else {
        Err(Unavailable(format!(
            "cannot mount a tmpfs at /run/systemd/nspawn: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// A booted container; torn down on drop.
pub struct Container {
    name: String,
    nspawn: Child,
    leader: i32,
    share: TempDir,
    log: PathBuf,
    /// Held open for the reaper; closing it (our exit, however it happens) kills the container.
    reaper_pipe: Option<ChildStdin>,
    reaper: Child,
}

impl Container {
    /// Boots a fresh container named after `prefix`, and waits until systemd inside says the
    /// system is running.
    pub fn boot(prefix: &str) -> Result<Container, Unavailable> {
        let rootfs = rootfs()?;
        ensure_run_tmpfs()?;
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "hd-{prefix}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let share = tempfile::Builder::new()
            .prefix(&format!("{name}-share-"))
            .tempdir()
            .map_err(|e| Unavailable(format!("cannot create a share dir: {e}")))?;
        std::fs::set_permissions(share.path(), std::fs::Permissions::from_mode(0o755))
            .map_err(|e| Unavailable(format!("chmod share dir: {e}")))?;
        let log = share.path().join("nspawn.log");
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| Unavailable(format!("cannot open {}: {e}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(|e| Unavailable(format!("dup log: {e}")))?;
        let mut command = Command::new("systemd-nspawn");
        command
            .arg("--directory")
            .arg(&rootfs)
            .args([
                "--volatile=overlay",
                "--boot",
                "--register=no",
                "--keep-unit",
                "--console=passive",
                "--machine",
                &name,
            ])
            .arg(format!("--bind={}:{SHARE}", share.path().display()))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let nspawn = command
            .spawn()
            .map_err(|e| Unavailable(format!("cannot start systemd-nspawn: {e}")))?;
        let mut reaper = Command::new("/bin/sh")
            .args([
                "-c",
                // The first line is PID 1's pid; EOF means the test is gone.
                "read leader; while read _; do :; done; \
                 [ \"$(cat /proc/$leader/comm 2>/dev/null)\" = systemd ] && kill -9 \"$leader\"",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| Unavailable(format!("cannot start the container reaper: {e}")))?;
        let reaper_pipe = reaper.stdin.take();
        let mut c = Container {
            name,
            nspawn,
            leader: 0,
            share,
            log,
            reaper_pipe,
            reaper,
        };
        c.leader = c.find_leader()?;
        if let Some(pipe) = c.reaper_pipe.as_mut() {
            let _ = writeln!(pipe, "{}", c.leader);
        }
        c.wait_running()?;
        Ok(c)
    }

    /// [`Container::boot`], or `None` after printing plainly why the test cannot run here;
    /// with `HOTDEPLOY_REQUIRE_NSPAWN` set, a container that cannot boot fails the test.
    pub fn boot_or_skip(prefix: &str, test: &str) -> Option<Container> {
        match Container::boot(prefix) {
            Ok(c) => Some(c),
            Err(why) if std::env::var_os(REQUIRE_ENV).is_some() => {
                panic!("{test}: the systemd container cannot boot ({REQUIRE_ENV} is set): {why}")
            }
            Err(why) => {
                eprintln!(
                    "NOT RUN: {test} needs a systemd container (systemd-nspawn) and cannot run \
                     here: {why}"
                );
                None
            }
        }
    }

    /// The machine name (also its hostname).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host pid of the container's PID 1 (systemd).
    pub fn leader_pid(&self) -> i32 {
        self.leader
    }

    /// The host directory that the container sees at [`SHARE`].
    pub fn share(&self) -> &Path {
        self.share.path()
    }

    /// Puts host file `from` in the share as `name` (a hard link when possible, else a copy)
    /// and returns its path inside the container (`/hd/NAME`).
    pub fn share_file(&self, from: &Path, name: &str) -> String {
        let to = self.share.path().join(name);
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        }
        let _ = std::fs::remove_file(&to);
        if std::fs::hard_link(from, &to).is_err() {
            std::fs::copy(from, &to)
                .unwrap_or_else(|e| panic!("copying {} to {}: {e}", from.display(), to.display()));
        }
        format!("{SHARE}/{name}")
    }

    /// Writes `contents` to `path` inside the container (its overlay), with `mode`.
    pub fn write_file(&self, path: &str, contents: &[u8], mode: u32) {
        let staged = self
            .share
            .path()
            .join(format!(".incoming-{}", path.replace('/', "_")));
        std::fs::write(&staged, contents)
            .unwrap_or_else(|e| panic!("writing {}: {e}", staged.display()));
        let inside = format!(
            "{SHARE}/{}",
            staged.file_name().unwrap_or_default().to_string_lossy()
        );
        let out = self.exec(
            &["install", "-D", "-m", &format!("{mode:o}"), &inside, path],
            Duration::from_secs(20),
        );
        assert!(
            out.status.success(),
            "installing {path} in {}: {}",
            self.name,
            describe(&out)
        );
        let _ = std::fs::remove_file(&staged);
    }

    /// Runs `argv` inside the container (its namespaces, root and working directory, a clean
    /// environment with a standard `PATH`), for at most `timeout`.
    pub fn exec<S: AsRef<str>>(&self, argv: &[S], timeout: Duration) -> Output {
        let mut command = Command::new("nsenter");
        command
            .arg("--target")
            .arg(self.leader.to_string())
            .args(["--all", "--", "/usr/bin/env", "-i"])
            .arg(format!("PATH={INSIDE_PATH}"))
            .args(argv.iter().map(AsRef::as_ref));
        proc::run_with_timeout(command, timeout)
    }

    /// `sh -c SCRIPT` inside, for at most 60 s.
    pub fn sh(&self, script: &str) -> Output {
        self.exec(&["/bin/sh", "-c", script], Duration::from_secs(60))
    }

    /// `systemctl ARGS` inside, for at most 60 s.
    pub fn systemctl<S: AsRef<str>>(&self, args: &[S]) -> Output {
        let mut argv = vec!["systemctl".to_string(), "--no-pager".into()];
        argv.extend(args.iter().map(|a| a.as_ref().to_string()));
        self.exec(&argv, Duration::from_secs(60))
    }

    /// `systemctl ARGS`, insisting on success.
    pub fn systemctl_ok<S: AsRef<str>>(&self, args: &[S]) {
        let out = self.systemctl(args);
        let what: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
        assert!(
            out.status.success(),
            "systemctl {} in {}: {}",
            what.join(" "),
            self.name,
            describe(&out)
        );
    }

    /// A unit's `ActiveState` and `SubState` (`("active", "running")`).
    pub fn unit_state(&self, unit: &str) -> (String, String) {
        let out = self.systemctl(&["show", "-p", "ActiveState,SubState", unit]);
        let text = String::from_utf8_lossy(&out.stdout);
        let get = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .unwrap_or_default()
                .to_string()
        };
        (get("ActiveState="), get("SubState="))
    }

    /// Waits until `unit`'s `ActiveState` is `state`; on timeout, the error carries the last
    /// state and the unit's journal.
    pub fn wait_unit(&self, unit: &str, state: &str, timeout: Duration) -> Result<(), String> {
        let until = Instant::now() + timeout;
        loop {
            let (active, sub) = self.unit_state(unit);
            if active == state {
                return Ok(());
            }
            if Instant::now() >= until {
                return Err(format!(
                    "{unit} in {} not {state} within {timeout:?} (last: {active}/{sub})\n{}",
                    self.name,
                    self.journal(unit, 60)
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last `lines` of `unit`'s journal inside the container.
    pub fn journal(&self, unit: &str, lines: u32) -> String {
        let out = self.exec(
            &[
                "journalctl",
                "--no-pager",
                "-o",
                "short-precise",
                "-n",
                &lines.to_string(),
                "-u",
                unit,
            ],
            Duration::from_secs(20),
        );
        format!(
            "---- journal of {unit} in {} ----\n{}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// The end of nspawn's own output (boot messages, errors).
    pub fn log_tail(&self) -> String {
        log_tail(&self.log, 4000)
    }

    /// Tears the container down now (as dropping it does).
    pub fn shutdown(self) {
        drop(self);
    }

    /// The container's PID 1: nspawn's child running systemd.
    fn find_leader(&mut self) -> Result<i32, Unavailable> {
        let parent = self.nspawn.id();
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(pid) = child_named(parent, "systemd") {
                return Ok(pid);
            }
            if let Ok(Some(status)) = self.nspawn.try_wait() {
                return Err(Unavailable(format!(
                    "systemd-nspawn exited ({status}) before booting:\n{}",
                    self.log_tail()
                )));
            }
            if Instant::now() >= until {
                return Err(Unavailable(format!(
                    "systemd-nspawn started no systemd within 30 s:\n{}",
                    self.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_running(&self) -> Result<(), Unavailable> {
        let until = Instant::now() + BOOT_TIMEOUT;
        let mut last = String::new();
        while Instant::now() < until {
            let out = self.exec(&["systemctl", "is-system-running"], Duration::from_secs(10));
            last = String::from_utf8_lossy(&out.stdout).trim().to_string();
            // `degraded` is a booted system with a failed unit: fine for a test container.
            if last == "running" || last == "degraded" {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(Unavailable(format!(
            "the container did not finish booting within {BOOT_TIMEOUT:?} (last state: \
             {last:?}):\n{}",
            self.log_tail()
        )))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if self.leader > 0 {
            // SIGKILL to a PID namespace's init ends every process in it.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.leader),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let until = Instant::now() + Duration::from_secs(15);
        loop {
            match self.nspawn.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= until => {
                    let _ = self.nspawn.kill();
                    let _ = self.nspawn.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        // The container is gone: let the reaper finish (its kill finds nothing).
        drop(self.reaper_pipe.take());
        let _ = self.reaper.wait();
    }
}

/// A child of `parent` whose command name is `comm`.
fn child_named(parent: u32, comm: &str) -> Option<i32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let name = head.split_once('(').map(|(_, n)| n).unwrap_or_default();
        let ppid = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok());
        if name == comm && ppid == Some(parent) {
            return Some(pid);
        }
    }
    None
}

/// How the agent in a container controls its service (`[service] control`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceControl {
    /// `exec`: the agent runs this command line itself (`{current}` is the live release).
    Exec(Vec<String>),
    /// `systemd`: the agent starts, stops and restarts this unit with `systemctl`.
    Systemd {
        /// The unit, e.g. `hd-app.service`.
        unit: String,
    },
}

/// The config of agent `web-1` in a container on `ip` (the container shares the host's
/// network): group `web`, service `app` under `/srv/app`, gRPC on [`net::AGENT_PORT`], the
/// agent-check responder and `/ready` on their ports, 1 s drain and undrain grace, and verify on
/// the app's `/health` at [`net::APP_PORT`] (2 successes 200 ms apart, within 10 s, after a
/// 300 ms settle). `tls` empty means `insecure = true`. More keys go in the answer's `extra`.
pub fn agent_config(
    ip: Ipv4Addr,
    coordinators: Vec<SocketAddr>,
    data_dir: &str,
    tls: toml::Table,
    control: ServiceControl,
) -> AgentConfigFile {
    let (exec, extra) = match control {
        ServiceControl::Exec(exec) => (exec, toml::Table::new()),
        // `exec` is unused in systemd mode, but a well-formed config names it.
        ServiceControl::Systemd { unit } => (
            vec!["/bin/false".into()],
            table(&format!(
                "[service]\ncontrol = \"systemd\"\nunit = \"{unit}\"\n"
            )),
        ),
    };
    let app = net::addr(ip, net::APP_PORT);
    AgentConfigFile {
        host_id: "web-1".into(),
        groups: vec!["web".into()],
        coordinators,
        listen: net::addr(ip, net::AGENT_PORT),
        data_dir: PathBuf::from(data_dir),
        tls,
        service_name: "app".into(),
        service_root: PathBuf::from("/srv/app"),
        exec,
        stop_timeout: "5s".into(),
        keep_releases: 3,
        haproxy_agent_listen: Some(net::addr(ip, net::AGENT_CHECK_PORT)),
        http_listen: Some(net::addr(ip, net::AGENT_READY_PORT)),
        drain_grace: "1s".into(),
        undrain_grace: "1s".into(),
        drain_timeout: None,
        haproxy: None,
        verify_http: format!("http://{app}/health"),
        verify_success_threshold: 2,
        verify_interval: "200ms".into(),
        verify_timeout: "10s".into(),
        verify_settle: "300ms".into(),
        extra,
    }
}

/// Status and output of a command, for messages.
pub fn describe(out: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}
