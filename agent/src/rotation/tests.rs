//! Rotation tests: the front ends over real sockets on 127.0.0.1, and drain/undrain against a
//! fake HAProxy runtime API on a Unix socket.

use super::*;
use std::collections::VecDeque;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener};

const TEST_IO_TIMEOUT: Duration = Duration::from_millis(500);

fn listen_cfg() -> RotationConfig {
    RotationConfig {
        haproxy_agent_listen: Some("127.0.0.1:0".into()),
        http_listen: Some("127.0.0.1:0".into()),
        ..RotationConfig::default()
    }
}

async fn served(cfg: &RotationConfig) -> (Arc<RotationControl>, watch::Sender<Health>) {
    let (htx, hrx) = watch::channel(Health::Healthy);
    let ctl = RotationControl::build(cfg, "web-1", Rotation::InRotation, hrx, TEST_IO_TIMEOUT);
    ctl.serve(CancellationToken::new()).await.unwrap();
    (ctl, htx)
}

async fn agent_check(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"be/web-1\n").await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    out
}

/// Sends raw bytes, returns everything the server wrote before closing.
async fn raw_http(addr: SocketAddr, req: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(req).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out))
        .await
        .expect("server did not close the connection");
    String::from_utf8_lossy(&out).into_owned()
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let text = raw_http(
        addr,
        format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes(),
    )
    .await;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

#[tokio::test]
async fn agent_check_answers_every_combination() {
    let (ctl, health) = served(&listen_cfg()).await;
    let addr = ctl.agent_check_addr().unwrap();
    let cases = [
        (Rotation::InRotation, Health::Healthy, "ready up\n"),
        (Rotation::InRotation, Health::Unhealthy, "ready down\n"),
        (Rotation::InRotation, Health::Unprovisioned, "maint\n"),
        (Rotation::Draining, Health::Healthy, "drain\n"),
        (Rotation::Draining, Health::Unhealthy, "drain\n"),
        (Rotation::OutOfRotation, Health::Healthy, "drain\n"),
        (Rotation::OutOfRotation, Health::Unprovisioned, "maint\n"),
    ];
    for (rot, h, want) in cases {
        ctl.set_state(rot);
        health.send_replace(h);
        assert_eq!(agent_check(addr).await, want, "{rot:?} {h:?}");
    }
}

#[tokio::test]
async fn agent_check_answers_a_client_that_sends_nothing() {
    let (ctl, _h) = served(&listen_cfg()).await;
    let mut s = TcpStream::connect(ctl.agent_check_addr().unwrap())
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out, "ready up\n");
}

#[tokio::test]
async fn ready_endpoint_statuses() {
    let (ctl, health) = served(&listen_cfg()).await;
    let addr = ctl.http_addr().unwrap();
    assert_eq!(get(addr, "/ready").await, (200, "ready\n".into()));
    health.send_replace(Health::Unhealthy);
    assert_eq!(get(addr, "/ready").await, (503, "unhealthy\n".into()));
    health.send_replace(Health::Healthy);
    ctl.set_state(Rotation::Draining);
    assert_eq!(get(addr, "/ready").await, (503, "draining\n".into()));
    ctl.set_state(Rotation::OutOfRotation);
    assert_eq!(get(addr, "/ready").await, (503, "out-of-rotation\n".into()));
    assert_eq!(get(addr, "/other").await.0, 404);
    assert_eq!(get(addr, "/ready/x").await.0, 404);
    let text = raw_http(
        addr,
        b"POST /ready HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 405"), "{text}");
}

#[tokio::test]
async fn hostile_clients_are_bounded() {
    let (ctl, _h) = served(&listen_cfg()).await;
    let addr = ctl.http_addr().unwrap();

    // An endless request head: refused or closed, never buffered without bound.
    let mut big = b"GET /ready HTTP/1.1\r\nhost: x\r\nx-pad: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 64 * 1024));
    let t0 = std::time::Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(&big).await; // the server may close mid-write
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out))
        .await
        .expect("oversized request left the connection open");
    let text = String::from_utf8_lossy(&out);
    assert!(!text.contains("200 OK"), "{text}");
    assert!(t0.elapsed() < Duration::from_secs(3));

    // A client that sends half a request and stalls is cut off after the I/O timeout...
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /ready HTTP/1.1\r\n").await.unwrap();
    // ... and meanwhile others are served.
    assert_eq!(get(addr, "/ready").await.0, 200);
    let mut out = Vec::new();
    let t0 = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(3), slow.read_to_end(&mut out))
        .await
        .expect("slow client pinned the connection")
        .ok();
    assert!(t0.elapsed() < Duration::from_secs(3));

    // Same for the agent-check port: a client that never reads nor closes is dropped.
    let agent = ctl.agent_check_addr().unwrap();
    let mut hold = TcpStream::connect(agent).await.unwrap();
    hold.write_all(&[b'x'; 100]).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(3), hold.read_to_end(&mut out))
        .await
        .expect("agent-check connection pinned")
        .ok();
    assert_eq!(String::from_utf8_lossy(&out), "ready up\n");
}

#[tokio::test]
async fn bind_error_names_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let cfg = RotationConfig {
        http_listen: Some(addr.clone()),
        ..RotationConfig::default()
    };
    let (_htx, hrx) = watch::channel(Health::Healthy);
    let ctl = RotationControl::new(&cfg, "web-1", Rotation::InRotation, hrx);
    let e = ctl.serve(CancellationToken::new()).await.unwrap_err();
    assert!(e.to_string().contains(&addr), "{e}");
}

// ---- fake HAProxy runtime API ----

#[derive(Default)]
struct FakeState {
    /// Values of scur for successive `show stat`s; the last one sticks.
    scur: VecDeque<u64>,
    status: VecDeque<&'static str>,
    commands: Vec<String>,
    /// The control whose states are noted as each command arrives (see [`FakeHaproxy::observe`]).
    observed: Option<Arc<RotationControl>>,
    /// (command, advertised, reported) as each command arrived, once observing.
    seen: Vec<(String, Rotation, Rotation)>,
}

struct FakeHaproxy {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    state: Arc<Mutex<FakeState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeHaproxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn next<T: Copy>(q: &mut VecDeque<T>) -> T {
    if q.len() > 1 {
        q.pop_front().unwrap()
    } else {
        *q.front().unwrap()
    }
}

impl FakeHaproxy {
    fn start(scur: &[u64], status: &[&'static str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("haproxy.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let state = Arc::new(Mutex::new(FakeState {
            scur: scur.iter().copied().collect(),
            status: status.iter().copied().collect(),
            ..FakeState::default()
        }));
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let mut line = Vec::new();
                let mut b = [0u8; 1];
                while sock.read(&mut b).await.unwrap_or(0) == 1 && b[0] != b'\n' {
                    line.push(b[0]);
                }
                let cmd = String::from_utf8(line).unwrap();
                let answer = {
                    let mut s = st.lock().unwrap();
                    s.commands.push(cmd.clone());
                    if let Some(ctl) = &s.observed {
                        let noted = (cmd.clone(), ctl.advertised(), ctl.state());
                        s.seen.push(noted);
                    }
                    if cmd == "show stat" {
                        let (scur, status) = (next(&mut s.scur), next(&mut s.status));
                        format!(
                            "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,\n\
                             fe,FRONTEND,,,9,9,100,1,0,0,0,0,0,,,,,OPEN,,\n\
                             be,web-0,0,0,7,9,,1,0,0,,0,,0,0,0,0,UP,1,\n\
                             be,web-1,0,0,{scur},9,,1,0,0,,0,,0,0,0,0,{status},1,\n\
                             be,BACKEND,0,0,9,9,100,1,0,0,0,0,,0,0,0,0,UP,2,\n\n"
                        )
                    } else if cmd.starts_with("set server be/web-1 state ") {
                        "\n".to_string()
                    } else {
                        "No such server.\n".to_string()
                    }
                };
                let _ = sock.write_all(answer.as_bytes()).await;
            }
        });
        Self {
            _dir: dir,
            path,
            state,
            task,
        }
    }

    fn commands(&self) -> Vec<String> {
        self.state.lock().unwrap().commands.clone()
    }

    /// From now on, notes what `ctl` advertises and reports as each command arrives: while a
    /// change waits on HAProxy, that is what load balancers and the coordinators see.
    fn observe(&self, ctl: &Arc<RotationControl>) {
        self.state.lock().unwrap().observed = Some(ctl.clone());
    }

    /// (command, advertised, reported) for each command received while observing.
    fn seen(&self) -> Vec<(String, Rotation, Rotation)> {
        self.state.lock().unwrap().seen.clone()
    }

    fn cfg(&self, server_timeout: Duration) -> RotationConfig {
        RotationConfig {
            haproxy_socket: Some(self.path.clone()),
            haproxy_backend: Some("be".into()),
            drain_timeout: server_timeout,
            ..RotationConfig::default()
        }
    }
}

fn control(cfg: &RotationConfig, server: &str) -> Arc<RotationControl> {
    let (_htx, hrx) = watch::channel(Health::Healthy);
    RotationControl::new(cfg, server, Rotation::InRotation, hrx)
}

#[tokio::test]
async fn drain_waits_for_sessions_to_reach_zero() {
    let fake = FakeHaproxy::start(&[3, 2, 1, 0], &["DRAIN"]);
    let ctl = control(&fake.cfg(Duration::from_secs(10)), "web-1");
    let mut states = ctl.subscribe();
    let seen = tokio::spawn(async move {
        let mut v = Vec::new();
        while states.changed().await.is_ok() {
            v.push(*states.borrow_and_update());
        }
        v
    });
    let took = ctl.drain().await.unwrap();
    assert!(took >= POLL * 3, "returned before scur reached 0: {took:?}");
    assert_eq!(ctl.state(), Rotation::OutOfRotation);
    let cmds = fake.commands();
    assert_eq!(cmds[0], "set server be/web-1 state drain");
    assert_eq!(cmds.iter().filter(|c| *c == "show stat").count(), 4);
    drop(ctl);
    assert_eq!(
        seen.await.unwrap(),
        vec![Rotation::Draining, Rotation::OutOfRotation]
    );
}

#[tokio::test]
async fn drain_timeout_is_reported_not_fatal() {
    let fake = FakeHaproxy::start(&[5], &["DRAIN"]);
    let ctl = control(&fake.cfg(Duration::from_millis(500)), "web-1");
    let took = ctl.drain().await.unwrap();
    assert!(took >= Duration::from_millis(500), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(ctl.state(), Rotation::OutOfRotation);
}

#[tokio::test]
async fn undrain_waits_until_up() {
    let fake = FakeHaproxy::start(&[0], &["MAINT", "DOWN", "DOWN 1/2", "UP"]);
    let ctl = control(&fake.cfg(Duration::from_secs(10)), "web-1");
    ctl.set_state(Rotation::OutOfRotation);
    let took = ctl.undrain().await.unwrap();
    assert!(took >= POLL * 3, "returned before UP: {took:?}");
    assert_eq!(ctl.state(), Rotation::InRotation);
    let cmds = fake.commands();
    assert_eq!(cmds[0], "set server be/web-1 state ready");
    assert_eq!(cmds.iter().filter(|c| *c == "show stat").count(), 4);
}

#[tokio::test]
async fn undrain_timeout_is_an_error() {
    let fake = FakeHaproxy::start(&[0], &["DOWN"]);
    let ctl = control(&fake.cfg(Duration::from_millis(500)), "web-1");
    let e = ctl.undrain().await.unwrap_err();
    assert!(matches!(e, RotationError::UndrainTimeout { .. }), "{e}");
    assert!(
        e.to_string().contains("be/web-1") && e.to_string().contains("DOWN"),
        "{e}"
    );
}

#[tokio::test]
async fn unknown_server_is_an_error_naming_the_socket() {
    let fake = FakeHaproxy::start(&[0], &["UP"]);
    let ctl = control(&fake.cfg(Duration::from_secs(1)), "web-9");
    let e = ctl.drain().await.unwrap_err().to_string();
    assert!(e.contains("No such server"), "{e}");
    assert!(e.contains(&fake.path.display().to_string()), "{e}");
}

#[tokio::test]
async fn without_socket_drain_and_undrain_wait_their_grace_and_run_hooks() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let hook = |word: &str| {
        vec![
            "sh".to_string(),
            "-c".to_string(),
            format!("echo {word} $HOTDEPLOY_SERVER >> {}", log.display()),
        ]
    };
    let cfg = RotationConfig {
        drain_grace: Duration::from_millis(300),
        undrain_grace: Duration::from_millis(200),
        drain_hook: hook("drain"),
        undrain_hook: hook("undrain"),
        ..RotationConfig::default()
    };
    let ctl = control(&cfg, "web-1");
    // Every state the drain goes through, as it happens (no sampling at a fixed offset into
    // the grace, which a slow machine can miss).
    let mut states = ctl.subscribe();
    let seen = tokio::spawn(async move {
        let mut v = Vec::new();
        while states.changed().await.is_ok() {
            v.push(*states.borrow_and_update());
        }
        v
    });
    let took = ctl.drain().await.unwrap();
    assert!(took >= Duration::from_millis(300));
    assert_eq!(ctl.state(), Rotation::OutOfRotation);
    let took = ctl.undrain().await.unwrap();
    assert!(took >= Duration::from_millis(200));
    assert_eq!(ctl.state(), Rotation::InRotation);
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "drain web-1\nundrain web-1\n"
    );
    drop(ctl);
    // Draining for the whole grace, out once it passed, back in after the undrain's grace.
    assert_eq!(
        seen.await.unwrap(),
        vec![
            Rotation::Draining,
            Rotation::OutOfRotation,
            Rotation::InRotation
        ]
    );
}

#[tokio::test]
async fn failing_drain_hook_is_an_error() {
    let cfg = RotationConfig {
        drain_grace: Duration::from_millis(10),
        drain_hook: vec![
            "sh".into(),
            "-c".into(),
            "echo lb api down >&2; exit 2".into(),
        ],
        ..RotationConfig::default()
    };
    let ctl = control(&cfg, "web-1");
    let e = ctl.drain().await.unwrap_err().to_string();
    assert!(e.contains("drain_hook") && e.contains("lb api down"), "{e}");
}

/// The socket-free `exchange` functions the fuzz targets use answer as the sockets do, whatever
/// the read size.
#[test]
fn exchanges_from_memory_answer_like_sockets() {
    for chunk in [1, 3, 4096] {
        let out = ready::exchange(
            b"GET /ready HTTP/1.1\r\nhost: x\r\n\r\n",
            chunk,
            Rotation::InRotation,
            Health::Healthy,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nready\n"), "{text}");

        let out =
            ready::exchange(b"GET /ready", chunk, Rotation::Draining, Health::Healthy).unwrap();
        assert!(out.is_empty(), "{out:?}");

        let input = vec![b'x'; 4000];
        let ex = agent_check::exchange(&input, chunk, Rotation::Draining, Health::Healthy).unwrap();
        assert_eq!(ex.reply, b"drain\n");
        assert_eq!(ex.consumed as u64, agent_check::MAX_INPUT);
    }
    let out = ready::exchange(
        b"BREW /ready HTCPCP/1.0\r\n\r\n",
        64,
        Rotation::InRotation,
        Health::Healthy,
    )
    .unwrap();
    assert!(
        out.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&out)
    );
}

/// Every input under `fuzz/regressions/ready/`, decoded as the `ready` fuzz target decodes it
/// (byte 0: rotation and health, byte 1: read size, then the request), through the same
/// `exchange`: one HTTP/1.x response (hyper answers a 1.0 request in kind), 200 only when ready.
#[test]
fn fuzz_regressions_ready() {
    for file in crate::fuzz_regressions::inputs("ready") {
        let data = std::fs::read(&file).unwrap();
        let [sel, chunk, input @ ..] = &data[..] else {
            panic!("{}: too short", file.display());
        };
        let rotation = Rotation::try_from(i32::from(sel & 3)).unwrap();
        let health = Health::try_from(i32::from((sel >> 2) & 3)).unwrap();
        let out = ready::exchange(input, usize::from(*chunk), rotation, health).unwrap();
        let text = String::from_utf8_lossy(&out);
        let status = text.split_whitespace().take(2).collect::<Vec<_>>();
        assert!(
            matches!(status[..], ["HTTP/1.0" | "HTTP/1.1", _]),
            "{}: {text:?}",
            file.display()
        );
        assert_eq!(text.matches("HTTP/1.").count(), 1, "{text:?}");
        if status[1] == "200" {
            assert_eq!(readiness(rotation, health), Ok(()));
        }
    }
}

/// Item 7: an undrain advertises `ready` at once (that is what brings the host back), but the
/// host is reported `in_rotation` only once HAProxy confirms it UP. The fake HAProxy notes what
/// the host advertised and reported as each command arrived: the undrain waits on exactly
/// these, so every moment of the wait is observed, however slowly the test runs.
#[tokio::test]
async fn undrain_reports_in_rotation_only_once_confirmed() {
    use Rotation::{InRotation as In, OutOfRotation as Out};
    let fake = FakeHaproxy::start(&[0], &["MAINT", "DOWN", "DOWN 1/2", "UP"]);
    let ctl = control(&fake.cfg(Duration::from_secs(10)), "web-1");
    ctl.set_state(Out);
    fake.observe(&ctl);
    ctl.undrain().await.unwrap();
    let stat = ("show stat".to_string(), In, Out);
    assert_eq!(
        fake.seen(),
        [
            ("set server be/web-1 state ready".to_string(), In, Out),
            stat.clone(), // MAINT
            stat.clone(), // DOWN
            stat.clone(), // DOWN 1/2
            stat,         // UP: reported out until its answer arrives
        ],
        "(command, advertised, reported) as HAProxy received each command"
    );
    assert_eq!(ctl.state(), In);
    assert_eq!(ctl.advertised(), In);
    assert!(ctl.settled());
}

/// Item 7: an undrain that cannot be confirmed is reverted: advertised `drain` again, HAProxy
/// told `state drain`, and the host never reported in rotation.
#[tokio::test]
async fn a_failed_undrain_is_reverted() {
    use Rotation::{InRotation as In, OutOfRotation as Out};
    let fake = FakeHaproxy::start(&[0], &["DOWN"]);
    let ctl = control(&fake.cfg(Duration::from_millis(500)), "web-1");
    ctl.set_state(Out);
    fake.observe(&ctl);
    assert!(ctl.undrain().await.is_err());
    let seen = fake.seen();
    let [first, stats @ .., last] = &seen[..] else {
        panic!("too few commands: {seen:?}");
    };
    assert_eq!(
        first,
        &("set server be/web-1 state ready".to_string(), In, Out),
        "{seen:?}"
    );
    assert!(!stats.is_empty(), "HAProxy was never asked: {seen:?}");
    assert!(
        stats
            .iter()
            .all(|s| *s == ("show stat".to_string(), In, Out)),
        "reported in rotation although the undrain failed: {seen:?}"
    );
    // Advertised `drain` again before HAProxy is told so.
    assert_eq!(
        last,
        &("set server be/web-1 state drain".to_string(), Out, Out),
        "{seen:?}"
    );
    assert_eq!(ctl.state(), Out);
    assert_eq!(ctl.advertised(), Out);
}

/// Item 3: at start, a server that HAProxy does not have UP (in DRAIN or MAINT, a previous
/// agent's doing, or DOWN, which may hide an admin drain) is not reported in rotation; one
/// that is UP is, and gets `state ready` re-asserted;
/// a host the journal says is drained gets `state drain` re-asserted.
#[tokio::test]
async fn reassert_at_start_trusts_haproxy_over_a_lost_journal() {
    for status in [
        "DRAIN",
        "MAINT",
        "DRAIN (agent)",
        "DOWN",
        "MAINT (resolution)",
    ] {
        let fake = FakeHaproxy::start(&[0], &[status]);
        let ctl = control(&fake.cfg(Duration::from_secs(1)), "web-1");
        ctl.reassert(false).await;
        assert_eq!(ctl.state(), Rotation::OutOfRotation, "{status}");
        assert_eq!(ctl.advertised(), Rotation::OutOfRotation, "{status}");
        assert!(ctl.settled());
    }
    let fake = FakeHaproxy::start(&[0], &["UP"]);
    let ctl = control(&fake.cfg(Duration::from_secs(1)), "web-1");
    ctl.reassert(false).await;
    assert_eq!(ctl.state(), Rotation::InRotation);
    assert_eq!(
        fake.commands(),
        ["show stat", "set server be/web-1 state ready"]
    );

    let fake = FakeHaproxy::start(&[0], &["UP"]);
    let ctl = control(&fake.cfg(Duration::from_secs(1)), "web-1");
    ctl.set_state(Rotation::OutOfRotation);
    ctl.reassert(true).await;
    assert_eq!(ctl.state(), Rotation::OutOfRotation);
    assert_eq!(fake.commands(), ["set server be/web-1 state drain"]);

    // HAProxy cannot be asked: out until confirmed.
    let cfg = RotationConfig {
        haproxy_socket: Some("/nonexistent/haproxy.sock".into()),
        haproxy_backend: Some("be".into()),
        ..RotationConfig::default()
    };
    let ctl = control(&cfg, "web-1");
    ctl.reassert(false).await;
    assert_eq!(ctl.state(), Rotation::OutOfRotation);

    // Without the socket the state counts as confirmed after undrain_grace.
    let cfg = RotationConfig {
        undrain_grace: Duration::from_millis(300),
        ..RotationConfig::default()
    };
    let ctl = control(&cfg, "web-1");
    let before = Instant::now();
    ctl.reassert(false).await;
    assert_eq!(ctl.state(), Rotation::InRotation);
    // Settled from `undrain_grace` after the reassert on: read the instant itself rather than
    // sampling `settled()` at an offset a slow machine may overshoot.
    let from = ctl
        .settled_at
        .lock()
        .unwrap()
        .expect("a settle instant after reassert");
    assert!(
        from >= before + Duration::from_millis(300)
            && from <= Instant::now() + Duration::from_millis(300),
        "settled from {:?} after the reassert",
        from - before
    );
    tokio::time::sleep_until(from).await;
    assert!(ctl.settled());
}

/// The brief's cut (b): while a drain or an undrain waits on HAProxy, `show stat` is polled
/// every [`POLL`] (25 ms), so the wait ends within about 25 ms of HAProxy getting there
/// rather than up to 200 ms later; and no faster, so a waiting host asks HAProxy at most 40
/// times a second. Counted over a 500 ms timeout that never confirms: sleeps only ever run
/// long, so the upper bound is exact and the lower one generous.
#[tokio::test]
async fn drain_and_undrain_poll_haproxy_every_25ms() {
    let polls = |fake: &FakeHaproxy| fake.commands().iter().filter(|c| *c == "show stat").count();
    let fake = FakeHaproxy::start(&[5], &["DRAIN"]);
    let ctl = control(&fake.cfg(Duration::from_millis(500)), "web-1");
    let took = ctl.drain().await.unwrap();
    let n = polls(&fake);
    let most = (took.as_millis() / POLL.as_millis()) as usize + 1;
    assert!(
        n >= 8,
        "{n} polls in {took:?}: the wait's granularity is too coarse"
    );
    assert!(
        n <= most,
        "{n} polls in {took:?}: more often than every {POLL:?}"
    );

    let fake = FakeHaproxy::start(&[0], &["DOWN"]);
    let ctl = control(&fake.cfg(Duration::from_millis(500)), "web-1");
    ctl.set_state(Rotation::OutOfRotation);
    let t0 = Instant::now();
    assert!(ctl.undrain().await.is_err());
    let took = t0.elapsed();
    let n = polls(&fake);
    assert!(
        n >= 8,
        "{n} polls in {took:?}: the wait's granularity is too coarse"
    );
    assert!(
        n <= (took.as_millis() / POLL.as_millis()) as usize + 1,
        "{n} polls in {took:?}: more often than every {POLL:?}"
    );
}
