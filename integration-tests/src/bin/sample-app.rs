//! `sample-app`: the service that hotdeploy deploys in the tests and in the local demo.
//!
//! It is deliberately small, but it behaves like a well-mannered production service, because the
//! zero-downtime claims of hotdeploy are only as good as the service they are measured against:
//!
//! - `GET /` answers 200 with the release id (the first line of `<dir>/VERSION`) and a newline,
//!   so a load generator can tell which release served each request.
//! - `GET /health` answers 200 `ok`, or 500 while `<dir>/FAIL_HEALTH` exists. A release built
//!   with that file fails its verify, which is how the tests exercise rollback.
//! - `GET /slow?ms=N` sleeps N ms (at most a minute) before answering like `/`, so a test can
//!   have a request in flight while it sends SIGTERM.
//! - Connections are HTTP/1.1 keep-alive.
//! - On SIGTERM (or SIGINT) it stops accepting, lets every in-flight request finish, closes idle
//!   keep-alive connections, and exits 0. That is the contract hotdeploy's `exec` control relies
//!   on when it stops the old release.
//!
//! - When `HD_HARNESS_PID` names a process (the test harness sets it, see
//!   `hotdeploy_integration_tests::proc`), it exits once that process is gone. An agent starts
//!   the app in a process group of its own, so that the app outlives a killed agent; this makes
//!   it not outlive a killed test.
//!
//! The agent starts it as `{current}/bin/sample-app --dir {current} --listen IP:PORT`, with
//! `{current}` resolved to the real release directory.

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

/// The longest `/slow` sleep honoured, and how long shutdown waits for in-flight requests.
const MAX_SLOW: Duration = Duration::from_secs(60);
const DRAIN_LIMIT: Duration = Duration::from_secs(90);

#[derive(Parser, Debug)]
#[command(about = "The sample HTTP service deployed by hotdeploy's tests")]
struct Args {
    /// The release directory: holds VERSION and, for a broken release, FAIL_HEALTH.
    #[arg(long)]
    dir: PathBuf,
    /// The address to serve on, HOST:PORT.
    #[arg(long)]
    listen: SocketAddr,
}

/// How often the harness's pid is checked.
const HARNESS_POLL: Duration = Duration::from_millis(250);

/// The pid in `HD_HARNESS_PID`, if set.
fn harness_pid() -> Option<nix::unistd::Pid> {
    let raw = std::env::var(hotdeploy_integration_tests::proc::HARNESS_PID_ENV).ok()?;
    raw.parse::<i32>().ok().map(nix::unistd::Pid::from_raw)
}

/// Resolves once `pid` no longer exists (never when `None`).
async fn harness_gone(pid: Option<nix::unistd::Pid>) {
    let Some(pid) = pid else {
        return std::future::pending().await;
    };
    loop {
        if let Err(nix::errno::Errno::ESRCH) = nix::sys::signal::kill(pid, None) {
            return;
        }
        tokio::time::sleep(HARNESS_POLL).await;
    }
}

/// What every request handler can see.
struct Release {
    dir: PathBuf,
    version: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let version_file = args.dir.join("VERSION");
    let version = std::fs::read_to_string(&version_file)
        .with_context(|| format!("reading {}", version_file.display()))?
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let local = listener.local_addr().context("reading the bound address")?;
    let pid = std::process::id();
    eprintln!("sample-app pid={pid} version={version} listening on {local}");

    let release = Arc::new(Release {
        dir: args.dir,
        version,
    });
    let mut terminate = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let graceful = GracefulShutdown::new();
    let harness = harness_gone(harness_pid());
    tokio::pin!(harness);

    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let release = release.clone();
                    let service = service_fn(move |req| respond(release.clone(), req));
                    let mut builder = http1::Builder::new();
                    builder.timer(TokioTimer::new()).keep_alive(true);
                    let connection = builder.serve_connection(TokioIo::new(stream), service);
                    let watched = graceful.watch(connection);
                    tokio::spawn(async move {
                        if let Err(err) = watched.await {
                            eprintln!("sample-app pid={pid} connection error: {err}");
                        }
                    });
                }
                Err(err) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    eprintln!("sample-app pid={pid} accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = &mut harness => {
                eprintln!("sample-app pid={pid}: the test harness that started it is gone; exiting");
                return Ok(());
            }
        }
    }

    drop(listener);
    eprintln!("sample-app pid={pid} stopping: no new connections, draining in-flight requests");
    match tokio::time::timeout(DRAIN_LIMIT, graceful.shutdown()).await {
        Ok(()) => eprintln!("sample-app pid={pid} drained, exiting"),
        Err(_) => eprintln!("sample-app pid={pid} gave up draining after {DRAIN_LIMIT:?}"),
    }
    Ok(())
}

/// Routes one request.
async fn respond(
    release: Arc<Release>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n",
        ));
    }
    let version_line = format!("{}\n", release.version);
    Ok(match req.uri().path() {
        "/" => reply(StatusCode::OK, version_line),
        "/health" => {
            if release.dir.join("FAIL_HEALTH").exists() {
                reply(StatusCode::INTERNAL_SERVER_ERROR, "failing\n")
            } else {
                reply(StatusCode::OK, "ok")
            }
        }
        "/slow" => {
            tokio::time::sleep(slow_delay(req.uri().query())).await;
            reply(StatusCode::OK, version_line)
        }
        _ => reply(StatusCode::NOT_FOUND, "not found\n"),
    })
}

/// The `ms=N` of a `/slow` query, capped at [`MAX_SLOW`]; zero when absent or malformed.
fn slow_delay(query: Option<&str>) -> Duration {
    let ms = query
        .unwrap_or_default()
        .split('&')
        .find_map(|pair| pair.strip_prefix("ms="))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    Duration::from_millis(ms).min(MAX_SLOW)
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
}
