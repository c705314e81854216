//! The accept loop both rotation front ends share (agent-check and `/ready`).
//!
//! Load balancers poll these ports constantly, and so may anyone else who can reach them, so
//! the loop bounds what a client can take: at most [`MAX_CONNECTIONS`] connections at once
//! (more are dropped on accept), and each connection handled within a deadline. Accept errors
//! (EMFILE and friends) back off instead of spinning.
//!
//! Each front end's per-connection handler is generic over the stream, so that it can also be
//! driven without a socket: a [`ScriptedClient`] plays one client's bytes to it from memory and
//! collects the reply, and [`run_scripted`] runs it under the same deadline. The front ends' `exchange` functions use it, for the fuzz targets and
//! their regression tests (which must exercise the very code a socket would).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Most concurrent connections per front end.
pub(crate) const MAX_CONNECTIONS: usize = 256;

/// Accepts connections until `shutdown` is cancelled, handling each with `handle` within
/// `timeout`. Connections being answered when it is cancelled finish within their deadline.
pub(crate) async fn accept_bounded<F, Fut>(
    listener: TcpListener,
    what: &'static str,
    timeout: Duration,
    shutdown: CancellationToken,
    handle: F,
) where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.cancelled() => {
                tracing::debug!("{what}: stopped accepting");
                return;
            }
        };
        let sock = match accepted {
            Ok((sock, _)) => sock,
            Err(e) => {
                tracing::warn!(error = %e, "{what} accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            continue; // over the cap: drop the connection
        };
        let work = handle(sock);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(timeout, work).await;
            drop(permit);
        });
    }
}

/// A client played from memory: it sends `input` in reads of at most `chunk` bytes, then
/// end-of-file, and keeps everything written to it. Writes never block; reads block once, when
/// `input` is used up, before the end-of-file, so that the server gets to answer first. That is
/// how a real client's FIN usually lands (after the server saw the request), and hyper, which
/// treats a client's half-close as an abort, would otherwise never answer a scripted request.
pub(crate) struct ScriptedClient<'a> {
    input: &'a [u8],
    chunk: usize,
    /// Bytes of `input` handed out so far.
    pub read: usize,
    /// Whether the one blocked read before end-of-file has happened.
    waited: bool,
    pub output: Vec<u8>,
}

impl AsyncRead for ScriptedClient<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.read == self.input.len() && !self.waited {
            self.waited = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let n = self
            .chunk
            .min(buf.remaining())
            .min(self.input.len() - self.read);
        let start = self.read;
        buf.put_slice(&self.input[start..start + n]);
        self.read += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ScriptedClient<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.output.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl<'a> ScriptedClient<'a> {
    /// A client that will send `input` in reads of at most `chunk` bytes (at least 1).
    pub fn new(input: &'a [u8], chunk: usize) -> Self {
        Self {
            input,
            chunk: chunk.max(1),
            read: 0,
            waited: false,
            output: Vec::new(),
        }
    }
}

/// Runs one connection's handler (`work`, typically over a [`ScriptedClient`]) within
/// `timeout`, as [`accept_bounded`] would, on a throwaway single-threaded runtime.
pub(crate) fn run_scripted(timeout: Duration, work: impl Future<Output = ()>) -> io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    rt.block_on(async {
        let _ = tokio::time::timeout(timeout, work).await;
    });
    Ok(())
}
