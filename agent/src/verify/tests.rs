//! Verifier tests against a tiny scripted HTTP server on 127.0.0.1.

use super::*;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

type Script = Arc<dyn Fn(u32) -> (u16, &'static str) + Send + Sync>;

/// Answers request number `n` (from 0) with `script(n)`; stops when dropped.
struct TestServer {
    url: String,
    hits: Arc<AtomicU32>,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    async fn start(script: Script) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/health", listener.local_addr().unwrap());
        let hits = Arc::new(AtomicU32::new(0));
        let counter = hits.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let n = counter.fetch_add(1, Ordering::SeqCst);
                let (status, body) = script(n);
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let resp = format!(
                        "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                });
            }
        });
        Self { url, hits, task }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn cfg(url: &str) -> VerifyConfig {
    VerifyConfig {
        http: Some(url.to_string()),
        success_threshold: 3,
        interval: Duration::from_millis(30),
        timeout: Duration::from_secs(5),
        settle: Duration::from_millis(150),
        ..VerifyConfig::default()
    }
}

fn collect() -> (Arc<Mutex<Vec<String>>>, impl Fn(String) + Send + Sync) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let l = lines.clone();
    (lines, move |s| l.lock().unwrap().push(s))
}

#[tokio::test]
async fn threshold_is_reached_after_initial_failures() {
    let srv = TestServer::start(Arc::new(|n| if n < 4 { (503, "") } else { (200, "ok") })).await;
    let (lines, progress) = collect();
    let report = Verifier::new(&cfg(&srv.url))
        .verify(&progress)
        .await
        .unwrap();
    assert_eq!(report.failures, 4);
    assert!(report.rounds > 4 + 3, "{report:?}");
    assert!(report.total >= report.time_to_healthy + Duration::from_millis(150));
    let lines = lines.lock().unwrap();
    assert!(lines.iter().any(|l| l.contains("status 503")), "{lines:?}");
}

#[tokio::test]
async fn a_failure_resets_the_count_and_timeout_fails() {
    // Alternating: never three in a row.
    let srv = TestServer::start(Arc::new(|n| if n % 2 == 0 { (200, "") } else { (500, "") })).await;
    let mut c = cfg(&srv.url);
    c.timeout = Duration::from_millis(500);
    let t0 = std::time::Instant::now();
    let e = Verifier::new(&c).verify(&|_| {}).await.unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(2));
    match &e {
        VerifyError::Timeout { best, .. } => assert_eq!(*best, 1),
        other => panic!("{other}"),
    }
    assert!(e.to_string().contains("status 500"), "{e}");
}

#[tokio::test]
async fn a_failure_during_settle_fails_verify() {
    let srv = TestServer::start(Arc::new(|n| if n < 4 { (200, "") } else { (500, "") })).await;
    let mut c = cfg(&srv.url);
    c.settle = Duration::from_secs(2);
    let e = Verifier::new(&c).verify(&|_| {}).await.unwrap_err();
    assert!(matches!(e, VerifyError::Settle { .. }), "{e}");
    assert!(e.to_string().contains("500"), "{e}");
    assert!(srv.hits.load(Ordering::SeqCst) >= 4);
}

#[tokio::test]
async fn body_contains_is_checked() {
    let srv = TestServer::start(Arc::new(|_| (200, "status: all good"))).await;
    let mut c = cfg(&srv.url);
    c.body_contains = Some("all good".into());
    Verifier::new(&c).probe_once().await.unwrap();
    c.body_contains = Some("degraded".into());
    let e = Verifier::new(&c).probe_once().await.unwrap_err();
    assert!(e.to_string().contains("body lacks \"degraded\""), "{e}");
    assert!(e.to_string().contains(&srv.url), "{e}");
}

#[tokio::test]
async fn expect_status_other_than_200() {
    let srv = TestServer::start(Arc::new(|_| (204, ""))).await;
    let mut c = cfg(&srv.url);
    let e = Verifier::new(&c).probe_once().await.unwrap_err();
    assert!(e.to_string().contains("status 204, expected 200"), "{e}");
    c.expect_status = 204;
    Verifier::new(&c).probe_once().await.unwrap();
}

#[tokio::test]
async fn connection_refused_is_reported() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let e = Verifier::new(&cfg(&format!("http://127.0.0.1:{port}/")))
        .probe_once()
        .await
        .unwrap_err();
    assert!(e.to_string().to_lowercase().contains("refused"), "{e}");
}

#[tokio::test]
async fn tcp_probe() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let c = VerifyConfig {
        tcp: Some(addr.clone()),
        ..VerifyConfig::default()
    };
    Verifier::new(&c).probe_once().await.unwrap();
    drop(listener);
    let e = Verifier::new(&c).probe_once().await.unwrap_err();
    assert!(
        e.to_string().starts_with(&format!("tcp probe {addr}")),
        "{e}"
    );
}

#[tokio::test]
async fn exec_probe() {
    let ok = VerifyConfig {
        exec: vec!["true".into()],
        ..VerifyConfig::default()
    };
    Verifier::new(&ok).probe_once().await.unwrap();
    let bad = VerifyConfig {
        exec: vec![
            "sh".into(),
            "-c".into(),
            "echo not ready >&2; exit 3".into(),
        ],
        ..VerifyConfig::default()
    };
    let e = Verifier::new(&bad).probe_once().await.unwrap_err();
    let msg = e.to_string();
    assert!(msg.starts_with("exec probe"), "{msg}");
    assert!(msg.contains("not ready") && msg.contains('3'), "{msg}");
}

#[tokio::test]
async fn all_probes_must_pass() {
    let srv = TestServer::start(Arc::new(|_| (200, ""))).await;
    let mut c = cfg(&srv.url);
    c.exec = vec!["false".into()];
    let e = Verifier::new(&c).probe_once().await.unwrap_err();
    assert!(e.to_string().starts_with("exec probe"), "{e}");
}

#[tokio::test]
async fn no_probes_is_an_error() {
    let e = Verifier::new(&VerifyConfig::default())
        .verify(&|_| {})
        .await
        .unwrap_err();
    assert!(matches!(e, VerifyError::NoProbes));
}

/// A port on 127.0.0.1 that nothing listens on (bound once to pick it, then closed).
async fn free_port() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// Starts answering 200 on `addr` after `delay`; returns each request's arrival time.
fn listen_later(
    addr: std::net::SocketAddr,
    delay: Duration,
) -> (Arc<Mutex<Vec<Instant>>>, tokio::task::JoinHandle<()>) {
    let hits = Arc::new(Mutex::new(Vec::new()));
    let h = hits.clone();
    let task = tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let listener = TcpListener::bind(addr).await.unwrap();
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            h.lock().unwrap().push(Instant::now());
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = sock.read(&mut buf).await;
                let _ = sock
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    (hits, task)
}

/// The brief's cut (a): a refused connection in the rise stage (the service is not listening
/// yet) is retried after `min(interval, 10ms)`, not a whole interval. With a 400 ms interval
/// and the service listening 60 ms in, the first success comes about 10 ms after it listens;
/// without the short retry it would wait for the second round, 400 ms in.
#[tokio::test]
async fn a_refused_connection_is_retried_soon_while_rising() {
    let addr = free_port().await;
    let (hits, server) = listen_later(addr, Duration::from_millis(60));
    let c = VerifyConfig {
        http: Some(format!("http://{addr}/health")),
        success_threshold: 1,
        interval: Duration::from_millis(400),
        timeout: Duration::from_secs(5),
        settle: Duration::ZERO,
        ..VerifyConfig::default()
    };
    let (lines, progress) = collect();
    let report = Verifier::new(&c).verify(&progress).await.unwrap();
    server.abort();
    // It did probe while nothing listened, more than once in the first interval.
    assert!(report.failures >= 2, "{report:?}");
    assert!(
        lines.lock().unwrap().iter().any(|l| l.contains("refused")),
        "{:?}",
        lines.lock().unwrap()
    );
    assert!(
        report.time_to_healthy < Duration::from_millis(400),
        "waited a whole interval after a refused connection: {report:?}"
    );
    assert_eq!(hits.lock().unwrap().len(), 1);
}

/// The short retry changes nothing else: `success_threshold` successes are still `interval`
/// apart, and a failure that is not a refused connection (here a 503 from a service that
/// listens but is not ready) still waits the whole interval.
#[tokio::test]
async fn successes_and_other_failures_keep_the_interval() {
    let addr = free_port().await;
    let (hits, server) = listen_later(addr, Duration::from_millis(30));
    let interval = Duration::from_millis(100);
    let c = VerifyConfig {
        http: Some(format!("http://{addr}/health")),
        success_threshold: 3,
        interval,
        timeout: Duration::from_secs(5),
        settle: Duration::ZERO,
        ..VerifyConfig::default()
    };
    let report = Verifier::new(&c).verify(&|_| {}).await.unwrap();
    server.abort();
    let hits = hits.lock().unwrap().clone();
    assert_eq!(hits.len(), 3, "{report:?}");
    for w in hits.windows(2) {
        assert!(
            w[1] - w[0] >= interval,
            "successes closer than the interval: {hits:?}"
        );
    }
    assert!(report.time_to_healthy >= interval * 2, "{report:?}");

    // 503s: every round a whole interval after the last.
    let srv = TestServer::start(Arc::new(|n| if n < 2 { (503, "") } else { (200, "ok") })).await;
    let mut c = cfg(&srv.url);
    c.success_threshold = 1;
    c.interval = Duration::from_millis(100);
    c.settle = Duration::ZERO;
    let report = Verifier::new(&c).verify(&|_| {}).await.unwrap();
    assert_eq!(report.failures, 2);
    assert!(
        report.time_to_healthy >= Duration::from_millis(200),
        "{report:?}"
    );
}
