//! A blocking, one-shot HTTP/1.1 request with everything a FleetLock or `/metrics` test sets:
//! method, headers, body, the client's source address, and HTTPS against the project's CA.
//!
//! [`http_probe`](crate::http_probe) asks "what does this GET answer"; this asks the questions
//! that need more: a POST with the `fleet-lock-protocol` header, a request from an address
//! outside an allow-list (the socket is bound to [`Request::from`] before it connects, which
//! loopback allows for any 127.0.0.0/8 address), a request over TLS checked against a `ca.pem`
//! written by `hotdeployctl certs init`.
//!
//! The exchange runs on the harness's [`background`](crate::background) runtime, all under one
//! deadline, and reads the answer to the end (`Connection: close`). Chunked bodies are decoded,
//! since hyper may send one. Call it from synchronous test code, not from inside a runtime.

use crate::background;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpSocket;

/// One request to send.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The client's source address; the kernel picks one when `None`.
    pub from: Option<IpAddr>,
    /// HTTPS, trusting this CA file; plain HTTP when `None`.
    pub ca: Option<PathBuf>,
    pub timeout: Duration,
}

impl Request {
    /// `method path`, no headers or body, plain HTTP, a 10 s deadline.
    pub fn new(method: &str, path: &str) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            headers: Vec::new(),
            body: Vec::new(),
            from: None,
            ca: None,
            timeout: Duration::from_secs(10),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = body.into();
        self
    }

    /// Sends from `ip`.
    pub fn from(mut self, ip: impl Into<IpAddr>) -> Request {
        self.from = Some(ip.into());
        self
    }

    /// Speaks HTTPS, trusting `ca`.
    pub fn tls(mut self, ca: impl Into<PathBuf>) -> Request {
        self.ca = Some(ca.into());
        self
    }

    /// Sends it to `addr` and reads the answer, within the deadline.
    pub fn send(&self, addr: SocketAddr) -> Result<Reply, String> {
        let req = self.clone();
        let timeout = self.timeout;
        background::handle().block_on(async move {
            match tokio::time::timeout(timeout, exchange(addr, &req)).await {
                Ok(r) => r,
                Err(_) => Err(format!(
                    "{} {} to {addr}: no answer within {timeout:?}",
                    req.method, req.path
                )),
            }
        })
    }
}

/// An answer: status, headers (names lower-cased) and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> Result<serde_json::Value, String> {
        serde_json::from_str(&self.body)
            .map_err(|e| format!("body is not JSON ({e}): {:?}", self.body))
    }
}

async fn exchange(addr: SocketAddr, req: &Request) -> Result<Reply, String> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| format!("socket: {e}"))?;
    if let Some(ip) = req.from {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| format!("binding the client to {ip}: {e}"))?;
    }
    let tcp = socket
        .connect(addr)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    match &req.ca {
        None => talk(tcp, addr, req).await,
        Some(ca) => {
            let roots = {
                let mut roots = rustls::RootCertStore::empty();
                let certs = CertificateDer::pem_file_iter(ca)
                    .map_err(|e| format!("reading {}: {e}", ca.display()))?;
                for cert in certs {
                    let cert = cert.map_err(|e| format!("reading {}: {e}", ca.display()))?;
                    roots
                        .add(cert)
                        .map_err(|e| format!("CA in {}: {e}", ca.display()))?;
                }
                roots
            };
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS versions: {e}"))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
            let stream = connector
                .connect(ServerName::IpAddress(addr.ip().into()), tcp)
                .await
                .map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
            talk(stream, addr, req).await
        }
    }
}

async fn talk<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    addr: SocketAddr,
    req: &Request,
) -> Result<Reply, String> {
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        req.method,
        req.path,
        req.body.len()
    );
    for (name, value) in &req.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(&req.body);
    io.write_all(&out)
        .await
        .map_err(|e| format!("sending to {addr}: {e}"))?;
    io.flush()
        .await
        .map_err(|e| format!("sending to {addr}: {e}"))?;
    let mut raw = Vec::new();
    // A server that closes without TLS close_notify still gave its whole answer: keep what came.
    if let Err(e) = io.read_to_end(&mut raw).await {
        if raw.is_empty() {
            return Err(format!("reading from {addr}: {e}"));
        }
    }
    parse(&raw).ok_or_else(|| {
        format!(
            "malformed HTTP answer from {addr}: {:?}",
            String::from_utf8_lossy(&raw)
        )
    })
}

fn parse(raw: &[u8]) -> Option<Reply> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let rest = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(rest)?
    } else {
        rest.to_vec()
    };
    Some(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = raw.windows(2).position(|w| w == b"\r\n")?;
        let size_text = String::from_utf8_lossy(&raw[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        raw = &raw[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(raw.get(..size)?);
        raw = raw.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_sized_and_chunked() {
        let r = parse(b"HTTP/1.1 409 Conflict\r\nRetry-After: 5\r\ncontent-length: 2\r\n\r\n{}")
            .unwrap();
        assert_eq!(r.status, 409);
        assert_eq!(r.header("retry-after"), Some("5"));
        assert_eq!(r.body, "{}");
        let r = parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
            .unwrap();
        assert_eq!(r.body, "abcde");
    }
}
