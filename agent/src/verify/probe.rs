//! The three probe kinds, each one attempt with its own timeout.
//!
//! - `http`: `GET <url>` with no redirects followed and no proxy (an `HTTP_PROXY` in the agent's
//!   environment must not reroute a loopback health check). Healthy when the status equals
//!   `expect_status` and, if `body_contains` is set, the first [`MAX_BODY`] bytes of the body
//!   contain it.
//! - `tcp`: a TCP connect to `host:port`.
//! - `exec`: an argv that must exit 0; it runs in its own process group, killed at the timeout.
//!
//! A [`ProbeError`] names the probe and says what went wrong in operator terms: "status 500",
//! "body lacks \"ok\"", "connection refused", "timed out after 2s".

use crate::cmd;
use std::time::Duration;

/// The most body we read looking for `body_contains`.
pub(crate) const MAX_BODY: usize = 1 << 20;

/// One failed probe.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{probe} probe {target}: {reason}")]
pub struct ProbeError {
    /// `http`, `tcp` or `exec`.
    pub probe: &'static str,
    /// The URL, address or command.
    pub target: String,
    pub reason: String,
    /// What kind of failure it was.
    pub kind: FailureKind,
}

/// What kind of failure a probe met; verify retries sooner after [`FailureKind::NotListening`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The connection was refused: nothing listens at the target yet (a service still
    /// starting). Costs the service nothing to ask again soon.
    NotListening,
    /// Anything else: a bad status or body, a timeout, an exec that failed.
    Unhealthy,
}

impl ProbeError {
    fn new(probe: &'static str, target: &str, reason: String, kind: FailureKind) -> Self {
        Self {
            probe,
            target: target.to_string(),
            reason,
            kind,
        }
    }
}

/// Whether `e` or any of its sources is an I/O error of kind `ConnectionRefused`.
fn refused(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut src = Some(e);
    while let Some(s) = src {
        if s.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return true;
        }
        src = s.source();
    }
    false
}

pub(crate) struct HttpProbe {
    pub client: reqwest::Client,
    pub url: String,
    pub expect_status: u16,
    pub body_contains: Option<String>,
}

impl HttpProbe {
    pub fn new(
        url: &str,
        expect_status: u16,
        body_contains: Option<String>,
        timeout: Duration,
    ) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            client,
            url: url.to_string(),
            expect_status,
            body_contains,
        })
    }

    pub async fn probe(&self) -> Result<(), ProbeError> {
        let fail =
            |reason: String| ProbeError::new("http", &self.url, reason, FailureKind::Unhealthy);
        let mut resp = self.client.get(&self.url).send().await.map_err(|e| {
            let kind = if refused(&e) {
                FailureKind::NotListening
            } else {
                FailureKind::Unhealthy
            };
            ProbeError::new("http", &self.url, describe_reqwest(&e), kind)
        })?;
        let status = resp.status().as_u16();
        if status != self.expect_status {
            return Err(fail(format!(
                "status {status}, expected {}",
                self.expect_status
            )));
        }
        let Some(needle) = &self.body_contains else {
            return Ok(());
        };
        let mut body = Vec::new();
        while body.len() < MAX_BODY {
            match resp.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) => break,
                Err(e) => return Err(fail(format!("reading body: {}", describe_reqwest(&e)))),
            }
        }
        body.truncate(MAX_BODY);
        if contains(&body, needle.as_bytes()) {
            Ok(())
        } else {
            Err(fail(format!("body lacks {needle:?}")))
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

/// reqwest's Display hides the cause ("error sending request"); walk the source chain.
fn describe_reqwest(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".into();
    }
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg = format!("{msg}: {s}");
        src = s.source();
    }
    msg
}

pub(crate) async fn tcp(addr: &str, timeout: Duration) -> Result<(), ProbeError> {
    let fail = |reason: String, kind| ProbeError::new("tcp", addr, reason, kind);
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            Err(fail(e.to_string(), FailureKind::NotListening))
        }
        Ok(Err(e)) => Err(fail(e.to_string(), FailureKind::Unhealthy)),
        Err(_) => Err(fail(
            format!("connect timed out after {timeout:?}"),
            FailureKind::Unhealthy,
        )),
    }
}

pub(crate) async fn exec(argv: &[String], timeout: Duration) -> Result<(), ProbeError> {
    let target = argv.join(" ");
    let fail = |reason: String| ProbeError::new("exec", &target, reason, FailureKind::Unhealthy);
    let out = cmd::run(argv, &[], None, timeout)
        .await
        .map_err(|e| fail(e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(fail(out.describe_failure()))
    }
}
