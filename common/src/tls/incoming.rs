//! The accept loop behind every gRPC listener: a connection cap, then the TLS handshake.
//!
//! tonic serves whatever stream of connections it is given. This module makes that stream:
//!
//! 1. Accept a TCP connection. Past `[limits] max_connections` open connections, close it at
//!    once, before any TLS work, so a flood of sockets costs a file descriptor for a moment and
//!    nothing more.
//! 2. Under TLS, run the handshake on its own task with a deadline, so a client that stalls
//!    mid-handshake holds up nobody else. The handshake takes the server settings current at
//!    that moment (see [`ServerTls::reload`]).
//! 3. Hand tonic a [`Conn`] that remembers the client's certificate chain in its [`ConnInfo`];
//!    services find it in the request's extensions (see `caller_role`).
//!
//! A refused handshake (no certificate, another CA, expired, revoked) is logged as an audit
//! event with the client's address and rustls's reason, which the client itself often cannot
//! see: under TLS 1.3 the server judges the client certificate after the client considers the
//! handshake done.
//!
//! The loop ends when tonic drops the stream (server shutdown). Open connections each hold a
//! permit of the cap until they close.

use super::server::ServerTls;
use rustls::pki_types::CertificateDer;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::ReceiverStream;

/// How long a client has to finish the TLS handshake. Generous for loopback and LANs; short
/// enough that stalled handshakes cannot pile up to the connection cap for long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections handed to tonic but not yet picked up. tonic picks them up at once; this only
/// smooths bursts.
const ACCEPTED_QUEUE: usize = 64;

/// What the client proved about itself.
#[derive(Debug, Clone)]
pub enum Peer {
    /// A plaintext connection (`insecure = true`): no identity.
    Plaintext,
    /// A TLS connection, with the client's certificate chain, leaf first.
    Certified(Arc<Vec<CertificateDer<'static>>>),
}

/// Facts about one connection, found in every request's extensions.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    pub peer: Peer,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// One accepted connection. Holds a permit of the listener's connection cap until dropped.
pub struct Conn {
    io: Io,
    info: ConnInfo,
    _permit: OwnedSemaphorePermit,
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

/// Accepts on `listener` until the returned stream is dropped. `tls` `None` is plaintext.
pub fn incoming(
    listener: TcpListener,
    tls: Option<ServerTls>,
    max_connections: usize,
) -> ReceiverStream<Result<Conn, io::Error>> {
    let (tx, rx) = mpsc::channel(ACCEPTED_QUEUE);
    tokio::spawn(accept_loop(
        listener,
        tls,
        Arc::new(Semaphore::new(max_connections)),
        max_connections,
        tx,
    ));
    ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<ServerTls>,
    cap: Arc<Semaphore>,
    max_connections: usize,
    tx: mpsc::Sender<Result<Conn, io::Error>>,
) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = tx.closed() => return,
        };
        let (tcp, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off rather than spin.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = cap.clone().try_acquire_owned() else {
            tracing::warn!(%remote, max_connections, "connection closed: the listener already holds [limits] max_connections");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        match &tls {
            None => {
                let conn = Conn {
                    io: Io::Plain(tcp),
                    info: ConnInfo {
                        remote,
                        peer: Peer::Plaintext,
                    },
                    _permit: permit,
                };
                if tx.send(Ok(conn)).await.is_err() {
                    return;
                }
            }
            Some(tls) => {
                let acceptor = tls.acceptor();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
                        .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::warn!(audit = true, %remote, "TLS handshake refused: {e}");
                            return;
                        }
                        Err(_) => {
                            tracing::info!(%remote, "TLS handshake not finished within {HANDSHAKE_TIMEOUT:?}; closed");
                            return;
                        }
                    };
                    let chain = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                        .unwrap_or_default();
                    let conn = Conn {
                        io: Io::Tls(Box::new(stream)),
                        info: ConnInfo {
                            remote,
                            peer: Peer::Certified(Arc::new(chain)),
                        },
                        _permit: permit,
                    };
                    let _ = tx.send(Ok(conn)).await;
                });
            }
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
