//! Self-tests of the harness: the pieces every multi-process test stands on.
//!
//! If the fault proxy did not really cut traffic, a partition test would pass without a
//! partition; if the sample app dropped in-flight requests on SIGTERM, a zero-downtime test
//! would blame hotdeploy for the app's bug; if the load generator did not count failures, it
//! would prove nothing. So each is checked here against the real thing, without the coordinator
//! or agent binaries.

// Test helpers panic on setup failures, like the tests themselves.
#![allow(clippy::unwrap_used)]

use hotdeploy_integration_tests::bins;
use hotdeploy_integration_tests::fault_proxy::FaultProxy;
use hotdeploy_integration_tests::haproxy::{HaProxy, HaServer, Observer};
use hotdeploy_integration_tests::http_probe;
use hotdeploy_integration_tests::load::{LoadConfig, LoadGen};
use hotdeploy_integration_tests::net::{self, APP_PORT};
use hotdeploy_integration_tests::pack::{self, ArtifactFormat};
use hotdeploy_integration_tests::proc::{self, ChildGuard};
use nix::sys::signal::Signal;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SHORT: Duration = Duration::from_secs(2);

fn temp_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(prefix).tempdir().unwrap()
}

/// A release directory (not packed) with `VERSION` = `version`.
fn release_dir(parent: &Path, version: &str) -> PathBuf {
    let dir = parent.join(version);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("VERSION"), format!("{version}\n")).unwrap();
    dir
}

/// Starts `sample-app --dir dir --listen addr` and waits until it listens.
fn start_app(program: &Path, dir: &Path, addr: SocketAddr, log: &Path) -> ChildGuard {
    let args = [
        "--dir".to_string(),
        dir.to_string_lossy().into_owned(),
        "--listen".to_string(),
        addr.to_string(),
    ];
    let app = ChildGuard::spawn("sample-app", program, &args, log, None);
    assert!(
        net::wait_port(addr, Duration::from_secs(10)),
        "sample-app did not listen on {addr}:\n{}",
        app.log_tail(2000)
    );
    app
}

fn get(addr: SocketAddr, path: &str) -> http_probe::Reply {
    http_probe::get(addr, path, SHORT).unwrap_or_else(|e| panic!("GET {path} from {addr}: {e}"))
}

// ---------------------------------------------------------------- sample-app

#[test]
fn sample_app_serves_version_and_fails_health_with_fail_health() {
    let tmp = temp_dir("hd-t-app-");
    let ip = net::alloc_ips(1)[0];
    let addr = net::addr(ip, APP_PORT);
    let dir = release_dir(tmp.path(), "v1");
    let app = start_app(&bins::sample_app(), &dir, addr, &tmp.path().join("app.log"));

    assert_eq!(
        get(addr, "/"),
        http_probe::Reply {
            status: 200,
            body: "v1\n".into()
        }
    );
    assert_eq!(
        get(addr, "/health"),
        http_probe::Reply {
            status: 200,
            body: "ok".into()
        }
    );
    assert_eq!(get(addr, "/nope").status, 404);

    std::fs::write(dir.join("FAIL_HEALTH"), "").unwrap();
    assert_eq!(get(addr, "/health").status, 500);
    std::fs::remove_file(dir.join("FAIL_HEALTH")).unwrap();
    assert_eq!(get(addr, "/health").status, 200);

    let log = app.log_tail(2000);
    assert!(
        log.contains(&format!("pid={}", app.pid()))
            && log.contains("version=v1")
            && log.contains(&addr.to_string()),
        "start line missing pid, version or address: {log}"
    );
}

#[test]
fn sample_app_keeps_connections_alive() {
    let tmp = temp_dir("hd-t-keepalive-");
    let ip = net::alloc_ips(1)[0];
    let addr = net::addr(ip, APP_PORT);
    let dir = release_dir(tmp.path(), "v7");
    let _app = start_app(&bins::sample_app(), &dir, addr, &tmp.path().join("app.log"));

    // Two requests on one connection: the second is answered on the same socket.
    let stream = std::net::TcpStream::connect_timeout(&addr, SHORT).unwrap();
    stream.set_read_timeout(Some(SHORT)).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    for _ in 0..2 {
        write!(writer, "GET / HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        assert!(status.starts_with("HTTP/1.1 200"), "{status:?}");
        let mut length = 0;
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).unwrap();
            if header == "\r\n" {
                break;
            }
            assert!(!header.to_ascii_lowercase().starts_with("connection: close"));
            if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0u8; length];
        std::io::Read::read_exact(&mut reader, &mut body).unwrap();
        assert_eq!(body, b"v7\n");
    }

    // And the load generator, with one worker, sees no failures on its keep-alive connection.
    let load = LoadGen::start(LoadConfig {
        workers: 1,
        ..LoadConfig::new(addr, 50)
    });
    std::thread::sleep(Duration::from_millis(600));
    let report = load.stop();
    assert_eq!(report.failed, 0, "{report:?}");
    assert!(report.ok >= 10, "{report:?}");
    assert_eq!(report.versions.get("v7").copied(), Some(report.ok));
}

#[test]
fn sample_app_finishes_in_flight_requests_on_sigterm_then_exits_0() {
    let tmp = temp_dir("hd-t-drain-");
    let ip = net::alloc_ips(1)[0];
    let addr = net::addr(ip, APP_PORT);
    let dir = release_dir(tmp.path(), "v2");
    let mut app = start_app(&bins::sample_app(), &dir, addr, &tmp.path().join("app.log"));

    let slow = std::thread::spawn(move || {
        let started = Instant::now();
        let reply = http_probe::get(addr, "/slow?ms=1500", Duration::from_secs(10));
        (reply, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300)); // the request is in flight
    app.signal(Signal::SIGTERM).unwrap();

    // New connections are refused soon after SIGTERM, while the slow one is still running.
    assert!(
        net::wait_port_closed(addr, Duration::from_secs(1)),
        "still accepting after SIGTERM"
    );

    let (reply, took) = slow.join().unwrap();
    let reply = reply.unwrap_or_else(|e| panic!("in-flight request failed on SIGTERM: {e}"));
    assert_eq!(
        reply,
        http_probe::Reply {
            status: 200,
            body: "v2\n".into()
        }
    );
    assert!(
        took >= Duration::from_millis(1400),
        "slow request returned early: {took:?}"
    );

    let status = app
        .wait_exit(Duration::from_secs(5))
        .expect("sample-app did not exit after draining");
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status:?}\n{}",
        app.log_tail(2000)
    );
}

// ---------------------------------------------------------------- fault proxy

#[test]
fn fault_proxy_forwards_http_and_cuts_it_when_blocked() {
    let tmp = temp_dir("hd-t-proxy-");
    let ips = net::alloc_ips(2);
    let app_addr = net::addr(ips[0], APP_PORT);
    let dir = release_dir(tmp.path(), "v3");
    let _app = start_app(
        &bins::sample_app(),
        &dir,
        app_addr,
        &tmp.path().join("app.log"),
    );
    let proxy = FaultProxy::start(net::addr(ips[1], net::PROXY_BASE_PORT + 1), app_addr).unwrap();
    let via = proxy.listen_addr();

    assert_eq!(get(via, "/").body, "v3\n");

    // A keep-alive load through the proxy sees failures while it is blocked.
    let load = LoadGen::start(LoadConfig {
        workers: 2,
        ..LoadConfig::new(via, 40)
    });
    std::thread::sleep(Duration::from_millis(400));
    let before = load.snapshot();
    assert!(before.ok > 0 && before.failed == 0, "{before:?}");
    proxy.set_blocked(true);
    assert!(
        http_probe::get(via, "/", SHORT).is_err(),
        "a request got through a blocked proxy"
    );
    std::thread::sleep(Duration::from_millis(400));
    let during = load.snapshot();
    assert!(
        during.failed > 0,
        "blocking did not fail requests: {during:?}"
    );
    proxy.set_blocked(false);
    std::thread::sleep(Duration::from_millis(400));
    let after = load.stop();
    assert!(
        after.ok > during.ok,
        "traffic did not resume after unblock: {after:?}"
    );
    assert_eq!(get(via, "/").body, "v3\n");
    assert!(proxy.stats().refused > 0);
}

// ---------------------------------------------------------------- hd-pack

fn tree_of(root: &Path) -> BTreeMap<String, (Vec<u8>, u32)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (Vec<u8>, u32)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                out.insert(format!("{rel}/"), (Vec::new(), 0));
                walk(root, &path, out);
            } else {
                out.insert(
                    rel,
                    (
                        std::fs::read(&path).unwrap(),
                        meta.permissions().mode() & 0o111,
                    ),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

#[test]
fn hd_pack_output_unpacks_to_the_same_files_and_prints_its_sha256() {
    let tmp = temp_dir("hd-t-pack-");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("bin")).unwrap();
    std::fs::create_dir_all(src.join("share/doc")).unwrap();
    std::fs::write(src.join("VERSION"), "v9\n").unwrap();
    std::fs::write(src.join("bin/run"), "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(src.join("bin/run"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(src.join("share/doc/big"), vec![7u8; 300_000]).unwrap();
    let expected = tree_of(&src);

    for format in ArtifactFormat::ALL {
        let out = tmp.path().join(format!("a.{}", format.extension()));
        let output = Command::new(bins::hd_pack())
            .arg(&src)
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "hd-pack failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let printed = String::from_utf8(output.stdout).unwrap().trim().to_string();
        let digest = pack::hex(&Sha256::digest(std::fs::read(&out).unwrap()));
        assert_eq!(
            printed, digest,
            "{format:?}: printed sha256 is not the file's"
        );

        // Deterministic: the library packs the same bytes.
        let again = tmp.path().join(format!("b.{}", format.extension()));
        assert_eq!(
            pack::pack_dir(&src, &again).unwrap(),
            digest,
            "{format:?} not deterministic"
        );

        let unpacked = tmp.path().join(format!("u-{}", format.extension()));
        pack::unpack(&out, &unpacked).unwrap();
        assert_eq!(
            tree_of(&unpacked),
            expected,
            "{format:?} round trip differs"
        );
    }

    let bad = Command::new(bins::hd_pack())
        .arg(&src)
        .arg(tmp.path().join("a.zip"))
        .output()
        .unwrap();
    assert!(!bad.status.success(), "hd-pack accepted a .zip output");
}

#[test]
fn sample_release_unpacks_and_runs() {
    let tmp = temp_dir("hd-t-release-");
    let (artifact, sha) =
        pack::make_sample_release(tmp.path(), "r42", true, ArtifactFormat::TarZst).unwrap();
    assert!(artifact.to_string_lossy().ends_with("app-r42.tar.zst"));
    assert_eq!(sha, pack::sha256_file(&artifact).unwrap());

    let release = tmp.path().join("releases/r42");
    pack::unpack(&artifact, &release).unwrap();
    assert_eq!(
        std::fs::read_to_string(release.join("VERSION")).unwrap(),
        "r42\n"
    );
    assert!(release.join("FAIL_HEALTH").exists());
    let app = release.join("bin/sample-app");
    assert!(
        std::fs::metadata(&app).unwrap().permissions().mode() & 0o111 != 0,
        "not executable"
    );

    let addr = net::addr(net::alloc_ips(1)[0], APP_PORT);
    let _running = start_app(&app, &release, addr, &tmp.path().join("app.log"));
    assert_eq!(get(addr, "/").body, "r42\n");
    assert_eq!(get(addr, "/health").status, 500);
}

// ---------------------------------------------------------------- load generator

#[test]
fn load_generator_counts_failures_against_a_closed_port() {
    let ip = net::alloc_ips(1)[0];
    let closed = net::addr(ip, APP_PORT); // nothing listens there (checked by alloc_ips)
    let load = LoadGen::start(LoadConfig {
        duration: Some(Duration::from_millis(800)),
        ..LoadConfig::new(closed, 50)
    });
    let report = load.wait(Duration::from_secs(10));
    assert_eq!(report.ok, 0, "{report:?}");
    // Enough samples to show that every one is counted as failed. Not 40 (50/s for 800 ms):
    // the rate a starved machine sustains is not what this test is about.
    assert!(report.failed >= 5, "{report:?}");
    assert_eq!(report.requests, report.failed);
    assert!(report.errors.contains_key("connect"), "{report:?}");
    assert!(!report.error_samples.is_empty());
}

#[test]
fn load_generator_counts_non_200_and_timeouts_as_failures() {
    let tmp = temp_dir("hd-t-load-");
    let ip = net::alloc_ips(1)[0];
    let addr = net::addr(ip, APP_PORT);
    let dir = release_dir(tmp.path(), "v1");
    let _app = start_app(&bins::sample_app(), &dir, addr, &tmp.path().join("app.log"));

    std::fs::write(dir.join("FAIL_HEALTH"), "").unwrap();
    let unhealthy = LoadGen::start(LoadConfig {
        path: "/health".into(),
        duration: Some(Duration::from_millis(500)),
        ..LoadConfig::new(addr, 40)
    })
    .wait(Duration::from_secs(10));
    assert!(unhealthy.failed > 0 && unhealthy.ok == 0, "{unhealthy:?}");
    assert!(unhealthy.errors.contains_key("status 500"), "{unhealthy:?}");

    let slow = LoadGen::start(LoadConfig {
        path: "/slow?ms=1000".into(),
        timeout: Duration::from_millis(300),
        workers: 2,
        duration: Some(Duration::from_millis(500)),
        ..LoadConfig::new(addr, 4)
    })
    .wait(Duration::from_secs(10));
    assert!(slow.failed > 0 && slow.ok == 0, "{slow:?}");
    assert!(slow.errors.contains_key("timeout"), "{slow:?}");
}

// ---------------------------------------------------------------- proc and net

#[test]
fn child_guard_kills_its_group_and_strays_even_on_panic() {
    let tmp = temp_dir("hd-t-guard-");
    let ip = net::alloc_ips(1)[0];
    let addr = net::addr(ip, APP_PORT);
    let dir = release_dir(tmp.path(), "stray");
    let marker = tmp.path().to_path_buf();
    let log = tmp.path().join("sh.log");
    let script = r#"setsid "$0" --dir "$1" --listen "$2" & exec sleep 300"#;
    let args = [
        "-c".to_string(),
        script.to_string(),
        bins::sample_app().to_string_lossy().into_owned(),
        dir.to_string_lossy().into_owned(),
        addr.to_string(),
    ];

    let result = std::panic::catch_unwind(|| {
        let guard = ChildGuard::spawn("sh", Path::new("/bin/sh"), &args, &log, Some(&marker));
        assert!(
            net::wait_port(addr, Duration::from_secs(10)),
            "stray app never listened"
        );
        assert!(!proc::pids_matching(&marker.to_string_lossy()).is_empty());
        let _keep = guard;
        panic!("test body panics with processes running");
    });
    assert!(result.is_err());
    assert!(
        net::wait_port_closed(addr, Duration::from_secs(5)),
        "the stray app survived"
    );
    assert!(
        proc::pids_matching(&marker.to_string_lossy()).is_empty(),
        "processes mentioning the temp dir survived"
    );
}

#[test]
fn run_with_timeout_kills_a_hung_command() {
    let mut command = Command::new("sleep");
    command.arg("30");
    let started = Instant::now();
    let output = proc::run_with_timeout(command, Duration::from_millis(300));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("timed out"));
}

#[test]
fn alloc_ips_gives_distinct_reserved_blocks() {
    let a = net::alloc_ips(3);
    let b = net::alloc_ips(3);
    assert_eq!(a.len(), 3);
    let all: std::collections::BTreeSet<_> = a.iter().chain(&b).collect();
    assert_eq!(all.len(), 6, "{a:?} {b:?}");
    for ip in a.iter().chain(&b) {
        assert_eq!(ip.octets()[0], 127);
        assert_ne!((ip.octets()[1], ip.octets()[2]), (0, 0));
        TcpListener::bind((*ip, APP_PORT)).unwrap();
    }
    // The two blocks differ: the reservation holds across calls.
    assert_ne!(a[0].octets()[1..3], b[0].octets()[1..3]);
}

#[test]
fn bins_are_found_next_to_the_test() {
    assert!(bins::sample_app().is_file());
    assert!(bins::hd_pack().is_file());
    assert!(bins::find("no-such-binary").is_none());
    let err = std::panic::catch_unwind(|| bins::path("no-such-binary")).unwrap_err();
    let message = err.downcast_ref::<String>().unwrap();
    assert!(
        message.contains("cargo build --workspace --bins"),
        "{message}"
    );
}

// ---------------------------------------------------------------- haproxy

/// A stand-in for the agent's agent-check responder: answers `ready up` or `drain`.
struct AgentCheckStub {
    draining: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl AgentCheckStub {
    fn start(addr: SocketAddr) -> AgentCheckStub {
        let listener = TcpListener::bind(addr).unwrap();
        listener.set_nonblocking(true).unwrap();
        let draining = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (d, s) = (draining.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        let line = if d.load(Ordering::SeqCst) {
                            "drain\n"
                        } else {
                            "ready up\n"
                        };
                        let _ = stream.write_all(line.as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        AgentCheckStub { draining, stop }
    }
}

impl Drop for AgentCheckStub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

#[test]
fn haproxy_balances_sample_apps_and_the_observer_sees_a_drain() {
    let haproxy_bin = HaProxy::require().unwrap_or_else(|e| panic!("{e}"));
    assert!(haproxy_bin.is_file());

    let tmp = temp_dir("hd-t-haproxy-");
    let ips = net::alloc_ips(3);
    let mut apps = Vec::new();
    let mut stubs = Vec::new();
    let mut servers = Vec::new();
    for (i, ip) in ips[..2].iter().enumerate() {
        let name = format!("h{}", i + 1);
        let addr = net::addr(*ip, APP_PORT);
        let dir = release_dir(tmp.path(), &format!("v-{name}"));
        apps.push(start_app(
            &bins::sample_app(),
            &dir,
            addr,
            &tmp.path().join(format!("{name}.log")),
        ));
        let agent_addr = net::addr(*ip, net::AGENT_CHECK_PORT);
        stubs.push(AgentCheckStub::start(agent_addr));
        servers.push(HaServer {
            name,
            addr,
            agent_addr,
        });
    }
    let haproxy = HaProxy::start(&servers, net::addr(ips[2], net::HAPROXY_PORT))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        haproxy.wait_all_up(2, Duration::from_secs(15)),
        "servers not UP: {:?}\n{}",
        haproxy.stat(),
        haproxy.log_tail()
    );

    let observer = Observer::start(&haproxy);
    let load = LoadGen::start(LoadConfig::new(haproxy.frontend_addr(), 100));
    std::thread::sleep(Duration::from_millis(800));

    stubs[0].draining.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(5);
    let drained = loop {
        if haproxy.server_status("h1").starts_with("DRAIN") {
            break true;
        }
        if Instant::now() >= deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(drained, "h1 never showed DRAIN: {:?}", haproxy.stat());
    std::thread::sleep(Duration::from_millis(500));
    stubs[0].draining.store(false, Ordering::SeqCst);
    assert!(
        haproxy.wait_all_up(2, Duration::from_secs(10)),
        "h1 did not come back"
    );

    let report = load.stop();
    let seen = observer.stop();
    assert_eq!(
        report.failed, 0,
        "requests failed through HAProxy: {report:?}"
    );
    assert_eq!(
        report.versions.len(),
        2,
        "both servers should have served: {report:?}"
    );
    assert_eq!(seen.max_not_up, 1, "{seen:?}");
    assert!(seen.samples > 10, "{seen:?}");
}

#[test]
fn nspawn_container_runs_commands_and_units_and_is_torn_down() {
    use hotdeploy_integration_tests::nspawn::{Container, SHARE};
    let Some(c) = Container::boot_or_skip(
        "harness",
        "nspawn_container_runs_commands_and_units_and_is_torn_down",
    ) else {
        return;
    };
    // A real systemd is PID 1 inside.
    let out = c.exec(&["cat", "/proc/1/comm"], SHORT * 5);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "systemd");
    // Exit codes and output come back.
    let out = c.sh("echo out; echo err >&2; exit 3");
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "out");
    assert_eq!(String::from_utf8_lossy(&out.stderr).trim(), "err");
    // Files in: through the share, and into the container's own tree.
    std::fs::write(c.share().join("hello"), b"hi").unwrap();
    let out = c.exec(&["cat", &format!("{SHARE}/hello")], SHORT * 5);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi");
    c.write_file(
        "/etc/systemd/system/hd-sleep.service",
        b"[Service]\nExecStart=/bin/sleep 600\n",
        0o644,
    );
    c.systemctl_ok(&["daemon-reload"]);
    c.systemctl_ok(&["start", "hd-sleep.service"]);
    c.wait_unit("hd-sleep.service", "active", SHORT * 10)
        .unwrap();
    c.systemctl_ok(&["stop", "hd-sleep.service"]);
    c.wait_unit("hd-sleep.service", "inactive", SHORT * 10)
        .unwrap();
    assert!(c.journal("hd-sleep.service", 20).contains("hd-sleep"));

    // Teardown ends every process of the container.
    let leader = c.leader_pid();
    assert!(Path::new(&format!("/proc/{leader}")).exists());
    c.shutdown();
    let gone = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true)
    };
    assert!(gone(leader), "the container's PID 1 survived its teardown");
}

/// Set for the child role of [`children_die_when_their_test_process_is_killed`]: the directory
/// to report into.
const ORPHAN_ROLE_ENV: &str = "HD_T_ORPHAN_DIR";

/// A test process killed outright (nextest's timeout, Ctrl-C, `kill -9`) runs no `Drop`. Its
/// children must die anyway: a direct child (through `hd-pdeathsig`), and a stray in a process
/// group of its own, the way an agent starts its app (the sample app watches `HD_HARNESS_PID`).
///
/// The test runs its own binary again, filtered to this test, as the "test process" that gets
/// killed; that copy takes the child role below.
#[test]
fn children_die_when_their_test_process_is_killed() {
    if let Some(dir) = std::env::var_os(ORPHAN_ROLE_ENV) {
        return orphan_owner(Path::new(&dir));
    }
    let tmp = temp_dir("hd-t-orphans-");
    let addr = net::addr(net::alloc_ips(1)[0], APP_PORT);
    std::fs::write(tmp.path().join("addr"), addr.to_string()).unwrap();
    let log = std::fs::File::create(tmp.path().join("owner.log")).unwrap();
    let mut owner = Command::new(std::env::current_exe().unwrap());
    owner
        .args([
            "--exact",
            "children_die_when_their_test_process_is_killed",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(ORPHAN_ROLE_ENV, tmp.path())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(std::process::Stdio::null());
    // Started directly, not through the harness: this process plays the test that is killed.
    let mut owner = std::os::unix::process::CommandExt::process_group(&mut owner, 0)
        .spawn()
        .unwrap();
    let ready = tmp.path().join("ready");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready.exists() {
        if Instant::now() >= deadline || owner.try_wait().unwrap().is_some() {
            let _ = owner.kill();
            panic!(
                "the owner process never got ready:\n{}",
                proc::log_tail(&tmp.path().join("owner.log"), 4000)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let pids: Vec<i32> = std::fs::read_to_string(&ready)
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 3, "owner reported {pids:?}");

    owner.kill().unwrap(); // SIGKILL: no Drop, no unwinding
    owner.wait().unwrap();

    let alive = |pid: i32| {
        // A zombie is dead; its parent (init or a subreaper) reaps it.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        !stat.is_empty()
            && stat
                .rsplit(')')
                .next()
                .map(|r| r.trim_start().starts_with('Z'))
                != Some(true)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|p| alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let survivors: Vec<i32> = pids.iter().copied().filter(|p| alive(*p)).collect();
    for p in &survivors {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p), Signal::SIGKILL);
    }
    assert!(
        survivors.is_empty(),
        "processes outlived their killed test process (now killed): {survivors:?} of \
         [sleep, sh, stray sample-app] = {pids:?}"
    );
    assert!(net::wait_port_closed(addr, Duration::from_secs(5)));
}

/// The killed test process of [`children_die_when_their_test_process_is_killed`]: starts a
/// direct child and a stray, reports their pids, and waits to be killed.
fn orphan_owner(dir: &Path) {
    let addr: SocketAddr = std::fs::read_to_string(dir.join("addr"))
        .unwrap()
        .parse()
        .unwrap();
    let sleeper = ChildGuard::spawn(
        "sleep",
        Path::new("/bin/sleep"),
        &["300"],
        &dir.join("sleep.log"),
        None,
    );
    let release = release_dir(dir, "orphan");
    let script = r#"setsid "$0" --dir "$1" --listen "$2" & exec sleep 300"#;
    let args = [
        "-c".to_string(),
        script.to_string(),
        bins::sample_app().to_string_lossy().into_owned(),
        release.to_string_lossy().into_owned(),
        addr.to_string(),
    ];
    let sh = ChildGuard::spawn("sh", Path::new("/bin/sh"), &args, &dir.join("sh.log"), None);
    assert!(net::wait_port(addr, Duration::from_secs(10)));
    let app = proc::pids_matching(&format!("--listen {addr}"));
    assert_eq!(app.len(), 1, "stray app pids: {app:?}");
    let report = format!("{} {} {}", sleeper.pid(), sh.pid(), app[0]);
    std::fs::write(dir.join("ready.tmp"), report).unwrap();
    std::fs::rename(dir.join("ready.tmp"), dir.join("ready")).unwrap();
    // Killed long before this; bounded anyway.
    std::thread::sleep(Duration::from_secs(120));
    std::mem::forget((sleeper, sh));
}

/// Set for the child role of [`the_test_lock_keeps_test_processes_apart`]: the lock directory.
const LOCK_ROLE_ENV: &str = "HD_T_LOCK_DIR";

/// nextest runs every test in its own process, so the lock that keeps the coordinator cluster
/// tests apart must hold across processes, not just threads. Two copies of this test binary
/// take it at once; their hold intervals must not overlap.
#[test]
fn the_test_lock_keeps_test_processes_apart() {
    use hotdeploy_integration_tests::test_lock::TestLock;
    let now_us = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros()
    };
    if let Some(dir) = std::env::var_os(LOCK_ROLE_ENV) {
        let dir = PathBuf::from(dir);
        let _lock = TestLock::acquire(&dir, "apart");
        let start = now_us();
        std::thread::sleep(Duration::from_millis(500));
        let line = format!("{start} {}\n", now_us());
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("intervals"))
            .unwrap();
        f.write_all(line.as_bytes()).unwrap();
        return;
    }
    let tmp = temp_dir("hd-t-lock-");
    let mut children: Vec<_> = (0..2)
        .map(|i| {
            // Their libtest lines must not reach this run's output (scripts/test counts them).
            let log = std::fs::File::create(tmp.path().join(format!("child{i}.log"))).unwrap();
            Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "the_test_lock_keeps_test_processes_apart",
                    "--nocapture",
                    "--test-threads",
                    "1",
                ])
                .env(LOCK_ROLE_ENV, tmp.path())
                .stdin(std::process::Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap()
        })
        .collect();
    for child in &mut children {
        assert!(child.wait().unwrap().success());
    }
    let text = std::fs::read_to_string(tmp.path().join("intervals")).unwrap();
    let mut spans: Vec<(u128, u128)> = text
        .lines()
        .map(|l| {
            let (a, b) = l.split_once(' ').unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        })
        .collect();
    spans.sort();
    assert_eq!(spans.len(), 2, "{text}");
    assert!(
        spans[0].1 <= spans[1].0,
        "two processes held the test lock at once: {spans:?}"
    );
}
