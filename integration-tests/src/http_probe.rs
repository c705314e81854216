//! A blocking, one-shot HTTP/1.1 GET for checks from synchronous test code.
//!
//! Tests ask small questions — "which release does this app serve?", "is the agent ready?" —
//! and want a plain answer with a deadline, not a client library. [`get`] opens a connection,
//! sends `GET path` with `Connection: close`, reads to the end within the timeout, and returns
//! the status code and body. Chunked bodies are not decoded; the sample app and the agent's
//! readiness endpoint send sized bodies.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A response: status code and body text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The HTTP status code.
    pub status: u16,
    /// The body, lossily decoded.
    pub body: String,
}

/// `GET path` from `addr`, all within `timeout`.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<Reply> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse(&raw).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "malformed HTTP response from {addr}: {:?}",
                String::from_utf8_lossy(&raw)
            ),
        )
    })
}

fn parse(raw: &[u8]) -> Option<Reply> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head
        .lines()
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(Reply {
        status,
        body: body.to_string(),
    })
}
