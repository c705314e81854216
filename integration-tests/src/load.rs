//! A steady-rate HTTP load generator that counts every failed request.
//!
//! The end-to-end claim of hotdeploy is "zero failed requests during a rollout" (DESIGN §9). The
//! load generator is the witness, so it must be strict and simple:
//!
//! - `workers` tasks each keep one HTTP/1.1 keep-alive connection to `target` and send
//!   `GET path` on a fixed schedule, staggered so that together they make `rate` requests per
//!   second. A worker that falls behind skips ticks rather than bursting.
//! - A request **fails** if connecting fails, the request or body errors, the status is not 200,
//!   or the whole exchange takes longer than `timeout` (2 s by default). A failure drops the
//!   connection; the next request opens a new one.
//! - A connection the server closed while idle (or announced with `Connection: close`) is
//!   replaced before the next request and is not a failure: that is ordinary keep-alive.
//! - Each 200 body (trimmed) is counted per value: with the sample app, that is the release id,
//!   so a test sees the fleet move from one version to the next.
//! - Latencies are kept for p50/p99/max.
//!
//! [`run`] is the async core; [`LoadGen`] runs it on the harness's background runtime for
//! synchronous tests, with [`LoadGen::snapshot`] and [`LoadGen::stop`]. The `hd-load` binary
//! wraps it for the demo and prints the [`LoadReport`] as JSON.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONNECTION, HOST};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

/// How many error messages are kept verbatim.
const MAX_ERROR_SAMPLES: usize = 50;

/// What to send, where, and how fast.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Where to send requests.
    pub target: SocketAddr,
    /// Total requests per second across all workers.
    pub rate: u32,
    /// Concurrent keep-alive connections.
    pub workers: usize,
    /// Stop after this long; `None` runs until stopped.
    pub duration: Option<Duration>,
    /// A request slower than this fails.
    pub timeout: Duration,
    /// The request path.
    pub path: String,
}

impl LoadConfig {
    /// `rate` req/s of `GET /` to `target` with 8 workers, a 2 s timeout, until stopped.
    pub fn new(target: SocketAddr, rate: u32) -> LoadConfig {
        LoadConfig {
            target,
            rate,
            workers: 8,
            duration: None,
            timeout: Duration::from_secs(2),
            path: "/".to_string(),
        }
    }
}

/// The outcome of a run (or of a run so far).
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadReport {
    /// The target address.
    pub target: String,
    /// How long the run has lasted, in ms.
    pub elapsed_ms: u64,
    /// Requests completed (ok + failed).
    pub requests: u64,
    /// Requests answered 200.
    pub ok: u64,
    /// Requests that failed (connect error, request error, non-200, timeout).
    pub failed: u64,
    /// Failure counts by kind (`connect`, `request`, `body`, `timeout`, `status 503`, ...).
    pub errors: BTreeMap<String, u64>,
    /// The first failures, verbatim.
    pub error_samples: Vec<String>,
    /// 200 responses per (trimmed) body: per release id with the sample app.
    pub versions: BTreeMap<String, u64>,
    /// Median latency, ms.
    pub latency_p50_ms: f64,
    /// 99th percentile latency, ms.
    pub latency_p99_ms: f64,
    /// Worst latency, ms.
    pub latency_max_ms: f64,
}

/// Counters shared by the workers.
#[derive(Default)]
struct Tally {
    ok: u64,
    failed: u64,
    errors: BTreeMap<String, u64>,
    error_samples: Vec<String>,
    versions: BTreeMap<String, u64>,
    latencies_us: Vec<u64>,
}

impl Tally {
    fn record(&mut self, latency: Duration, outcome: Result<String, Failure>) {
        self.latencies_us
            .push(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
        match outcome {
            Ok(body) => {
                self.ok += 1;
                *self.versions.entry(body).or_default() += 1;
            }
            Err(failure) => {
                self.failed += 1;
                *self.errors.entry(failure.kind).or_default() += 1;
                if self.error_samples.len() < MAX_ERROR_SAMPLES {
                    self.error_samples.push(failure.detail);
                }
            }
        }
    }

    fn report(&self, target: SocketAddr, elapsed: Duration) -> LoadReport {
        let mut sorted = self.latencies_us.clone();
        sorted.sort_unstable();
        let percentile = |q: f64| -> f64 {
            if sorted.is_empty() {
                return 0.0;
            }
            let i = ((q * sorted.len() as f64) as usize).min(sorted.len() - 1);
            sorted[i] as f64 / 1000.0
        };
        LoadReport {
            target: target.to_string(),
            elapsed_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            requests: self.ok + self.failed,
            ok: self.ok,
            failed: self.failed,
            errors: self.errors.clone(),
            error_samples: self.error_samples.clone(),
            versions: self.versions.clone(),
            latency_p50_ms: percentile(0.50),
            latency_p99_ms: percentile(0.99),
            latency_max_ms: sorted.last().map_or(0.0, |&us| us as f64 / 1000.0),
        }
    }
}

/// Why one request failed.
struct Failure {
    kind: String,
    detail: String,
}

impl Failure {
    fn new(kind: &str, detail: impl std::fmt::Display) -> Failure {
        Failure {
            kind: kind.to_string(),
            detail: format!("{kind}: {detail}"),
        }
    }
}

/// Runs the load until `cfg.duration` passes or `stop` turns true (or its sender is dropped),
/// then returns the report. In-flight requests finish (within the timeout) first.
pub async fn run(cfg: LoadConfig, stop: watch::Receiver<bool>) -> LoadReport {
    let tally = Arc::new(Mutex::new(Tally::default()));
    run_with_tally(cfg, stop, tally).await
}

async fn run_with_tally(
    cfg: LoadConfig,
    stop: watch::Receiver<bool>,
    tally: Arc<Mutex<Tally>>,
) -> LoadReport {
    let started = Instant::now();
    let deadline = cfg.duration.map(|d| started + d);
    let cfg = Arc::new(cfg);
    let mut workers = tokio::task::JoinSet::new();
    for index in 0..cfg.workers.max(1) {
        workers.spawn(worker(
            index,
            cfg.clone(),
            tally.clone(),
            stop.clone(),
            deadline,
        ));
    }
    while workers.join_next().await.is_some() {}
    let report = lock(&tally).report(cfg.target, started.elapsed());
    report
}

fn lock(tally: &Mutex<Tally>) -> std::sync::MutexGuard<'_, Tally> {
    tally
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One keep-alive connection sending on its share of the schedule.
async fn worker(
    index: usize,
    cfg: Arc<LoadConfig>,
    tally: Arc<Mutex<Tally>>,
    mut stop: watch::Receiver<bool>,
    deadline: Option<Instant>,
) {
    let workers = cfg.workers.max(1) as u32;
    let period = Duration::from_secs_f64(f64::from(workers) / f64::from(cfg.rate.max(1)));
    let offset = period * index as u32 / workers;
    let mut ticker = tokio::time::interval_at(Instant::now() + offset, period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut connection: Option<SendRequest<Empty<Bytes>>> = None;
    loop {
        let until_deadline = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => break,
            _ = until_deadline => break,
        }
        if *stop.borrow() {
            break;
        }
        let sent = Instant::now();
        let outcome = match tokio::time::timeout(cfg.timeout, request(&mut connection, &cfg)).await
        {
            Ok(Ok(body)) => Ok(body),
            Ok(Err(failure)) => Err(failure),
            Err(_) => Err(Failure::new(
                "timeout",
                format!("no answer in {:?}", cfg.timeout),
            )),
        };
        if outcome.is_err() {
            connection = None;
        }
        lock(&tally).record(sent.elapsed(), outcome);
    }
}

/// Sends one request on the worker's connection (opening one if needed); the trimmed body of a
/// 200, or why it failed.
async fn request(
    connection: &mut Option<SendRequest<Empty<Bytes>>>,
    cfg: &LoadConfig,
) -> Result<String, Failure> {
    if let Some(sender) = connection.as_mut() {
        if sender.is_closed() || sender.ready().await.is_err() {
            *connection = None; // closed while idle: ordinary keep-alive turnover
        }
    }
    let sender = match connection {
        Some(sender) => sender,
        None => connection.insert(connect(cfg.target).await?),
    };
    let req = Request::get(cfg.path.as_str())
        .header(HOST, cfg.target.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|e| Failure::new("request", e))?;
    let response = sender
        .send_request(req)
        .await
        .map_err(|e| Failure::new("request", e))?;
    let status = response.status();
    let closing = response
        .headers()
        .get(CONNECTION)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| Failure::new("body", e))?
        .to_bytes();
    if closing {
        *connection = None;
    }
    if status != hyper::StatusCode::OK {
        let kind = format!("status {}", status.as_u16());
        return Err(Failure::new(&kind, String::from_utf8_lossy(&body).trim()));
    }
    Ok(String::from_utf8_lossy(&body).trim().to_string())
}

async fn connect(target: SocketAddr) -> Result<SendRequest<Empty<Bytes>>, Failure> {
    let stream = TcpStream::connect(target)
        .await
        .map_err(|e| Failure::new("connect", format!("{target}: {e}")))?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| Failure::new("connect", format!("{target}: handshake: {e}")))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// A load run on the background runtime, for synchronous tests.
pub struct LoadGen {
    target: SocketAddr,
    started: Instant,
    stop: watch::Sender<bool>,
    tally: Arc<Mutex<Tally>>,
    done: mpsc::Receiver<LoadReport>,
}

impl LoadGen {
    /// Starts the load now.
    pub fn start(cfg: LoadConfig) -> LoadGen {
        let (stop, stop_rx) = watch::channel(false);
        let (done_tx, done) = mpsc::channel();
        let tally = Arc::new(Mutex::new(Tally::default()));
        let target = cfg.target;
        let run_tally = tally.clone();
        crate::background::handle().spawn(async move {
            let report = run_with_tally(cfg, stop_rx, run_tally).await;
            let _ = done_tx.send(report);
        });
        LoadGen {
            target,
            started: Instant::now(),
            stop,
            tally,
            done,
        }
    }

    /// The counts so far, without stopping.
    pub fn snapshot(&self) -> LoadReport {
        lock(&self.tally).report(self.target, self.started.elapsed())
    }

    /// Stops the load, waits for in-flight requests (bounded), and returns the final report.
    pub fn stop(self) -> LoadReport {
        let _ = self.stop.send(true);
        self.wait(Duration::from_secs(30))
    }

    /// Waits (at most `timeout`) for a run with a duration to end by itself; then stops it.
    pub fn wait(self, timeout: Duration) -> LoadReport {
        match self.done.recv_timeout(timeout) {
            Ok(report) => report,
            Err(_) => {
                let _ = self.stop.send(true);
                self.done
                    .recv_timeout(Duration::from_secs(10))
                    .unwrap_or_else(|_| {
                        lock(&self.tally).report(self.target, self.started.elapsed())
                    })
            }
        }
    }
}
