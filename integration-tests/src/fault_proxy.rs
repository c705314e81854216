//! A fault-injecting TCP proxy: the harness's way to partition a network that is all loopback.
//!
//! DESIGN §9 asks for partitions "through a fault-injecting TCP proxy that the harness puts
//! between any two nodes". A [`FaultProxy`] listens on one address and forwards every accepted
//! connection to a target, byte for byte, in both directions. The cluster harness gives every
//! ordered pair of coordinators (i → j) its own proxy and writes it into node i's `[peers]`
//! entry for j, so all Raft traffic from i to j crosses that proxy.
//!
//! Faults:
//! - [`FaultProxy::set_blocked`]`(true)` closes every connection in flight (both directions are
//!   dropped at once) and closes each new connection as soon as it is accepted, so the two nodes
//!   cannot exchange a single byte until it is unblocked. The listener itself stays open: a
//!   blocked link looks like a peer that hangs up, not like a port that moved.
//! - [`FaultProxy::set_delay`] holds every chunk for a while before passing it on, in both
//!   directions: a slow link rather than a broken one.
//!
//! The proxy runs as tasks on the harness's [`background`](crate::background) runtime and stops
//! when the `FaultProxy` is dropped.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long the proxy waits to connect to its target.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A running proxy from `listen_addr` to `target_addr`.
pub struct FaultProxy {
    listen: SocketAddr,
    target: SocketAddr,
    shared: Arc<Shared>,
    accept_task: JoinHandle<()>,
}

/// Counters, for tests and failure messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections accepted and forwarded.
    pub forwarded: u64,
    /// Connections closed on accept because the proxy was blocked.
    pub refused: u64,
    /// Bytes passed on, both directions.
    pub bytes: u64,
}

/// State shared by the accept loop and the connection tasks.
struct Shared {
    blocked: AtomicBool,
    delay_ms: AtomicU64,
    /// Bumped to cut every connection in flight (on block and on drop).
    cut: watch::Sender<u64>,
    forwarded: AtomicU64,
    refused: AtomicU64,
    bytes: AtomicU64,
}

impl FaultProxy {
    /// Binds `listen` (port 0 picks one) and forwards to `target`. Connections to the target
    /// are made lazily, one per accepted connection.
    pub fn start(listen: SocketAddr, target: SocketAddr) -> io::Result<FaultProxy> {
        let std_listener = std::net::TcpListener::bind(listen)?;
        std_listener.set_nonblocking(true)?;
        let listen = std_listener.local_addr()?;
        let (cut, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            blocked: AtomicBool::new(false),
            delay_ms: AtomicU64::new(0),
            cut,
            forwarded: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        });
        let accept_shared = shared.clone();
        let accept_task = crate::background::handle().spawn(async move {
            match TcpListener::from_std(std_listener) {
                Ok(listener) => accept_loop(listener, target, accept_shared).await,
                Err(e) => eprintln!("fault proxy {listen} -> {target}: cannot listen: {e}"),
            }
        });
        Ok(FaultProxy {
            listen,
            target,
            shared,
            accept_task,
        })
    }

    /// The address clients connect to.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// The address traffic is forwarded to.
    pub fn target_addr(&self) -> SocketAddr {
        self.target
    }

    /// Blocks (cutting every open connection) or unblocks the link.
    pub fn set_blocked(&self, blocked: bool) {
        self.shared.blocked.store(blocked, Ordering::SeqCst);
        if blocked {
            self.shared.cut.send_modify(|generation| *generation += 1);
        }
    }

    /// Whether the link is blocked.
    pub fn is_blocked(&self) -> bool {
        self.shared.blocked.load(Ordering::SeqCst)
    }

    /// Holds every chunk for `delay` before passing it on (zero: no delay).
    pub fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.shared.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// The counters so far.
    pub fn stats(&self) -> ProxyStats {
        ProxyStats {
            forwarded: self.shared.forwarded.load(Ordering::SeqCst),
            refused: self.shared.refused.load(Ordering::SeqCst),
            bytes: self.shared.bytes.load(Ordering::SeqCst),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept_task.abort();
        self.shared.blocked.store(true, Ordering::SeqCst);
        self.shared.cut.send_modify(|generation| *generation += 1);
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((client, _peer)) => {
                let shared = shared.clone();
                tokio::spawn(forward(client, target, shared));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Forwards one connection until either side closes, an error, or a cut.
async fn forward(client: TcpStream, target: SocketAddr, shared: Arc<Shared>) {
    // Subscribe before reading `blocked`, so a block that lands in between is still seen.
    let mut cut = shared.cut.subscribe();
    if shared.blocked.load(Ordering::SeqCst) {
        shared.refused.fetch_add(1, Ordering::SeqCst);
        return; // dropping `client` closes it
    }
    let upstream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(stream)) => stream,
        _ => return,
    };
    shared.forwarded.fetch_add(1, Ordering::SeqCst);
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    let both_ways = async {
        tokio::try_join!(
            pump(client_read, upstream_write, &shared),
            pump(upstream_read, client_write, &shared),
        )
    };
    tokio::select! {
        _ = both_ways => {}
        _ = cut.changed() => {}
    }
    // Every half is dropped here: both sockets close.
}

/// Copies one direction, honouring the delay; passes an EOF on as a half-close.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, shared: &Shared) -> io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(());
        }
        // A block cuts connections asynchronously (through `cut`); checking here as well means
        // no byte read after `set_blocked(true)` returned is ever passed on.
        if shared.blocked.load(Ordering::SeqCst) {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "link blocked",
            ));
        }
        let delay = shared.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        // Counted before the write, so that whoever receives these bytes already sees them in
        // the stats (counting after let a reader race ahead of the counter).
        shared.bytes.fetch_add(n as u64, Ordering::SeqCst);
        to.write_all(&buf[..n]).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{Ipv4Addr, TcpStream as StdStream};
    use std::time::Instant;

    /// An echo server on a background thread; returns its address.
    fn echo_server() -> SocketAddr {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut stream = stream;
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 || stream.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    fn proxy_to(target: SocketAddr) -> FaultProxy {
        FaultProxy::start(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), target).unwrap()
    }

    fn connect(addr: SocketAddr) -> StdStream {
        let stream = StdStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        stream
    }

    /// Sends `msg` and reads the echo; `None` if the connection was closed or failed.
    fn round_trip(stream: &mut StdStream, msg: &[u8]) -> Option<Vec<u8>> {
        stream.write_all(msg).ok()?;
        let mut got = vec![0u8; msg.len()];
        stream.read_exact(&mut got).ok()?;
        Some(got)
    }

    #[test]
    fn forwards_both_ways() {
        let proxy = proxy_to(echo_server());
        let mut stream = connect(proxy.listen_addr());
        assert_eq!(
            round_trip(&mut stream, b"hello").as_deref(),
            Some(&b"hello"[..])
        );
        assert_eq!(
            round_trip(&mut stream, b"again").as_deref(),
            Some(&b"again"[..])
        );
        assert_eq!(proxy.stats().forwarded, 1);
        assert_eq!(proxy.stats().bytes, 20);
    }

    #[test]
    fn block_cuts_open_connections_and_refuses_new_ones_until_unblocked() {
        let proxy = proxy_to(echo_server());
        let mut open = connect(proxy.listen_addr());
        assert!(round_trip(&mut open, b"before").is_some());

        proxy.set_blocked(true);
        assert!(
            round_trip(&mut open, b"during").is_none(),
            "open connection survived a block"
        );
        let mut fresh = connect(proxy.listen_addr());
        assert!(
            round_trip(&mut fresh, b"new").is_none(),
            "new connection got through a block"
        );
        assert!(proxy.stats().refused >= 1);

        proxy.set_blocked(false);
        let mut after = connect(proxy.listen_addr());
        assert_eq!(
            round_trip(&mut after, b"after").as_deref(),
            Some(&b"after"[..])
        );
    }

    #[test]
    fn delay_slows_every_chunk() {
        let proxy = proxy_to(echo_server());
        proxy.set_delay(Duration::from_millis(150));
        let mut stream = connect(proxy.listen_addr());
        let started = Instant::now();
        assert!(round_trip(&mut stream, b"slow").is_some());
        // One delay each way.
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn drop_closes_the_listener_and_connections() {
        let proxy = proxy_to(echo_server());
        let addr = proxy.listen_addr();
        let mut open = connect(addr);
        assert!(round_trip(&mut open, b"x").is_some());
        drop(proxy);
        assert!(round_trip(&mut open, b"y").is_none());
        assert!(crate::net::wait_port_closed(addr, Duration::from_secs(5)));
    }
}
