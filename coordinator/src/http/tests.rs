//! The HTTP listener in process, over HTTPS with certificates the project makes: the routes,
//! a client without a certificate, the limits (a connection cap, an over-long head), and the
//! shutdown.

use super::*;
use crate::fleetlock::FleetLock;
use crate::metrics::Metrics;
use crate::raft::test_node;
use hotdeploy_common::config::TlsConfig;
use hotdeploy_common::tls::ServerTls;
use hotdeploy_common::tls_pki::{init_dir, InitSpec, Subject};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn tls_config(dir: &Path) -> TlsConfig {
    init_dir(
        dir,
        &InitSpec {
            subjects: vec![
                Subject::coordinator("1@127.0.0.1").unwrap(),
                Subject::operator("ops").unwrap(),
            ],
        },
    )
    .unwrap();
    TlsConfig {
        ca: Some(dir.join("ca.pem")),
        cert: Some(dir.join("coordinator-1.pem")),
        key: Some(dir.join("coordinator-1-key.pem")),
        insecure: false,
        crl: None,
    }
}

fn client(pki: &Path, identity: bool) -> reqwest::Client {
    let ca = std::fs::read(pki.join("ca.pem")).unwrap();
    let mut b = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .timeout(Duration::from_secs(10));
    if identity {
        let mut pem = std::fs::read(pki.join("operator.pem")).unwrap();
        pem.extend(std::fs::read(pki.join("operator-key.pem")).unwrap());
        b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    b.build().unwrap()
}

struct Server {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    pki: std::path::PathBuf,
}

async fn start(limits: Limits) -> Server {
    let data = tempfile::tempdir().unwrap();
    let pki = tempfile::tempdir().unwrap();
    let tls = ServerTls::load(&tls_config(pki.path())).unwrap();
    let cfg = test_node::config(data.path(), "127.0.0.1:1");
    let node = test_node::start(&cfg).await;
    let metrics = Arc::new(Metrics::new(&node));
    let fleetlock = FleetLock::new(
        node.clone(),
        vec!["127.0.0.0/8".parse().unwrap()],
        metrics.clone(),
    );
    let routes = Arc::new(Routes::new(node, metrics, Some(fleetlock)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(serve(listener, tls, limits, routes, async {
        let _ = stopped.await;
    }));
    Server {
        addr,
        stop: Some(stop),
        done,
        pki: pki.path().to_path_buf(),
        _dirs: (data, pki),
    }
}

/// Over HTTPS with the coordinator's own certificate: `/metrics`, `/leader`, FleetLock as
/// Zincati sends it (no client certificate), a client that shows a valid one, 404 and 405;
/// plain HTTP on the same port gets no answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_metrics_leader_and_fleetlock_over_https() {
    let s = start(Limits::default()).await;
    let base = format!("https://{}", s.addr);
    let c = client(&s.pki, false);

    let r = c.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        crate::metrics::CONTENT_TYPE,
        "OpenMetrics text"
    );
    let text = r.text().await.unwrap();
    assert!(
        text.contains("hotdeploy_raft_role{role=\"leader\"} 1"),
        "{text}"
    );

    let r = c.get(format!("{base}/leader")).send().await.unwrap();
    assert_eq!(
        (r.status().as_u16(), r.text().await.unwrap()),
        (200, "leader\n".into())
    );

    // What Zincati sends: the header, a pretty-printed body, no content type. The group does
    // not exist here: the answer is the protocol's JSON error.
    let body =
        "{\n  \"client_params\": {\n    \"id\": \"node-1\",\n    \"group\": \"default\"\n  }\n}";
    let r = c
        .post(format!("{base}/v1/pre-reboot"))
        .header("fleet-lock-protocol", "true")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let v: serde_json::Value = r.json_value().await;
    assert_eq!(v["kind"], "unknown_group", "{v}");
    let r = c
        .post(format!("{base}/v1/steady-state"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json_value().await["kind"], "missing_protocol_header");

    let with_cert = client(&s.pki, true);
    let r = with_cert
        .get(format!("{base}/leader"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    assert_eq!(
        c.get(format!("{base}/nope")).send().await.unwrap().status(),
        404
    );
    assert_eq!(
        c.post(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        405
    );

    let plain = reqwest::Client::new()
        .get(format!("http://{}/metrics", s.addr))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP was answered: {plain:?}");
}

/// The limits: past the connection cap a new connection is closed at once (a stalled client
/// holds its slot only until its handshake deadline); an over-long request head is refused;
/// after the shutdown signal the listener stops within its deadline and answers no one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_its_limits_and_stops_on_the_signal() {
    let limits = Limits {
        max_connections: 1,
        handshake: Duration::from_secs(2),
        head: Duration::from_secs(2),
        connection: Duration::from_secs(5),
    };
    let mut s = start(limits).await;
    let base = format!("https://{}", s.addr);
    let c = client(&s.pki, false);
    // A client that connects and says nothing holds the one connection.
    let mut idle = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = c.get(format!("{base}/leader")).send().await;
    assert!(refused.is_err(), "answered past the cap: {refused:?}");
    // Its handshake deadline frees the slot: the stalled connection is closed.
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf))
        .await
        .expect("the stalled connection is closed within its handshake deadline")
        .unwrap_or(0);
    assert_eq!(n, 0);
    let started = Instant::now();
    loop {
        match c.get(format!("{base}/leader")).send().await {
            Ok(r) if r.status() == 200 => break,
            other => assert!(
                started.elapsed() < Duration::from_secs(5),
                "no answer after the slot freed: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let huge = "x".repeat(16 * 1024);
    let r = c
        .get(format!("{base}/metrics"))
        .header("x-filler", huge)
        .send()
        .await;
    // Refused with 431, or the connection is cut.
    if let Ok(r) = r {
        assert_eq!(r.status(), 431, "an over-long head");
    }

    let stopping = Instant::now();
    let _ = s.stop.take().map(|tx| tx.send(()));
    tokio::time::timeout(Duration::from_secs(10), &mut s.done)
        .await
        .expect("the listener stops within its connection deadline")
        .unwrap();
    assert!(stopping.elapsed() < Duration::from_secs(6));
    let mut late = tokio::net::TcpStream::connect(s.addr).await;
    if let Ok(sock) = late.as_mut() {
        let _ = sock.write_all(b"GET /leader HTTP/1.1\r\n\r\n").await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), sock.read_to_end(&mut out)).await;
        assert!(out.is_empty(), "answered after shutdown: {out:?}");
    }
}

trait JsonValue {
    async fn json_value(self) -> serde_json::Value;
}

impl JsonValue for reqwest::Response {
    async fn json_value(self) -> serde_json::Value {
        let text = self.text().await.unwrap();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }
}

/// With `[fleetlock] enabled = false` the FleetLock paths answer 404 `fleetlock_disabled` in
/// the protocol's error shape, saying how to turn it on; `/metrics` still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleetlock_paths_say_it_is_off_when_disabled() {
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;

    let data = tempfile::tempdir().unwrap();
    let cfg = test_node::config(data.path(), "127.0.0.1:1");
    let node = test_node::start(&cfg).await;
    let metrics = Arc::new(Metrics::new(&node));
    let routes = Routes::new(node, metrics, None);
    let ip = "127.0.0.1".parse().unwrap();
    for path in ["/v1/pre-reboot", "/v1/steady-state"] {
        let req = http::Request::post(path)
            .header("fleet-lock-protocol", "true")
            .body(Full::new(Bytes::from_static(
                br#"{"client_params":{"id":"node-1","group":"web"}}"#,
            )))
            .unwrap();
        let resp = routes.answer(ip, req).await;
        assert_eq!(resp.status(), 404, "{path}");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["kind"], "fleetlock_disabled", "{v}");
        assert!(
            v["value"]
                .as_str()
                .unwrap_or_default()
                .contains("enabled = true"),
            "{v}"
        );
    }
    let req = http::Request::get("/metrics")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(routes.answer(ip, req).await.status(), 200);
}
