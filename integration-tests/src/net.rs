//! Loopback addresses for tests, and waiting for ports.
//!
//! DESIGN §9: every node of a multi-process test gets its own address in 127.0.0.0/8. Giving
//! each node its own IP lets all nodes use the same well-known ports (so configs read like a real
//! fleet's), and makes "which node is this connection from" visible in logs.
//!
//! Test binaries run concurrently (cargo runs test threads in parallel, and CI may run several
//! test processes), so [`alloc_ips`] hands out whole blocks `127.A.B.1 ..= 127.A.B.n` at random
//! and *reserves* each block for the life of the process by keeping a listener bound on
//! `127.A.B.255:RESERVATION_PORT`. A second claimant — another thread or another process — fails
//! that bind and moves on to another block. On top of that, every port the harness uses is
//! bind-checked on every address of the block before it is handed out.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// The port of the per-block reservation listener (outside Linux's default ephemeral range).
pub const RESERVATION_PORT: u16 = 64999;

/// Coordinator Raft/gRPC port on each coordinator IP.
pub const COORD_PORT: u16 = 7400;
/// Coordinator HTTP port (metrics, FleetLock).
pub const COORD_HTTP_PORT: u16 = 7480;
/// First fault-proxy port: the proxy from node i to node j listens on `ip_i:PROXY_BASE_PORT+j`.
pub const PROXY_BASE_PORT: u16 = 7500;
/// Agent gRPC port on each agent IP.
pub const AGENT_PORT: u16 = 7401;
/// Agent HAProxy `agent-check` responder port.
pub const AGENT_CHECK_PORT: u16 = 7402;
/// Agent HTTP readiness port.
pub const AGENT_READY_PORT: u16 = 7403;
/// Agent Prometheus `/metrics` port (`metrics_listen`).
pub const AGENT_METRICS_PORT: u16 = 7404;
/// gRPC port of a host's second agent, the one that upgrades the main agent (DESIGN §8).
pub const SELF_AGENT_PORT: u16 = 7411;
/// The sample app's port on each agent IP.
pub const APP_PORT: u16 = 8080;
/// HAProxy's frontend port.
pub const HAPROXY_PORT: u16 = 8000;

/// Every port the harness may bind on an allocated address.
pub fn harness_ports() -> Vec<u16> {
    let mut ports = vec![
        COORD_PORT,
        COORD_HTTP_PORT,
        AGENT_PORT,
        AGENT_CHECK_PORT,
        AGENT_READY_PORT,
        AGENT_METRICS_PORT,
        SELF_AGENT_PORT,
        APP_PORT,
        HAPROXY_PORT,
    ];
    ports.extend((1..=10).map(|j| PROXY_BASE_PORT + j));
    ports
}

/// Reservation listeners, held until the process exits.
static RESERVED: Mutex<Vec<TcpListener>> = Mutex::new(Vec::new());

/// `n` (1..=250) distinct loopback addresses no other test is using, with every
/// [`harness_ports`] port free on each. Panics after a bounded number of attempts.
pub fn alloc_ips(n: usize) -> Vec<Ipv4Addr> {
    alloc_ips_with_ports(n, &harness_ports())
}

/// Like [`alloc_ips`], checking only `ports`.
pub fn alloc_ips_with_ports(n: usize, ports: &[u16]) -> Vec<Ipv4Addr> {
    assert!(
        (1..=250).contains(&n),
        "alloc_ips: n must be 1..=250, got {n}"
    );
    for _attempt in 0..200 {
        let r = random_u64();
        let a = (r % 254) as u8 + 1; // 127.1.x.x ..= 127.254.x.x: stay off 127.0.0.x
        let b = ((r >> 8) % 256) as u8;
        let reservation = SocketAddr::from((Ipv4Addr::new(127, a, b, 255), RESERVATION_PORT));
        let Ok(listener) = TcpListener::bind(reservation) else {
            continue; // someone holds this block
        };
        let ips: Vec<Ipv4Addr> = (1..=n as u8).map(|x| Ipv4Addr::new(127, a, b, x)).collect();
        let all_free = ips.iter().all(|ip| {
            ports
                .iter()
                .all(|&port| TcpListener::bind(SocketAddr::from((*ip, port))).is_ok())
        });
        if all_free {
            RESERVED
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(listener);
            return ips;
        }
    }
    panic!("alloc_ips: no free block of {n} loopback addresses after 200 attempts");
}

/// A free ephemeral port on `ip` (bound then released; fine for loopback tests).
pub fn free_port(ip: Ipv4Addr) -> u16 {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("free_port: cannot bind {ip}:0: {e}"))
}

/// Waits until something accepts TCP connections on `addr`, for at most `timeout`.
pub fn wait_port(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until nothing accepts TCP connections on `addr` any more, for at most `timeout`.
pub fn wait_port_closed(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_err() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `ip:port` as a socket address.
pub fn addr(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip), port)
}

/// A random number without a dependency: the std hasher's per-process random keys, mixed with
/// the time, the pid and a counter.
fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    COUNTER.fetch_add(1, Ordering::Relaxed).hash(&mut hasher);
    std::process::id().hash(&mut hasher);
    SystemTime::now().hash(&mut hasher);
    hasher.finish()
}
