//! A 3-member etcd cluster on loopback, the baseline of the lock benchmark.
//!
//! It is shaped like our own bench cluster: each member gets its own 127.x address (from
//! [`net::alloc_ips_with_ports`], which reserves the block against concurrent test processes),
//! its own data dir under one temp dir, and its own log file. Members are configured with the
//! static `--initial-cluster` bootstrap and etcd's defaults otherwise, so the WAL is fsynced on
//! every Ready just as our sled storage is. Every process is owned by a
//! [`ChildGuard`](crate::proc::ChildGuard): dropping the cluster kills and reaps them all before
//! the temp dir goes.
//!
//! The binary is `/usr/bin/etcd` from Debian's `etcd-server` package (3.4), or whatever the
//! `HD_BENCH_ETCD` environment variable names.

use super::etcd_client::EtcdClient;
use crate::net;
use crate::proc::ChildGuard;
use anyhow::{anyhow, bail, Context, Result};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;
use tempfile::TempDir;
use tokio::time::Instant;

/// etcd's client port on each member IP.
pub const CLIENT_PORT: u16 = 2379;
/// etcd's peer port on each member IP.
pub const PEER_PORT: u16 = 2380;
/// The default etcd binary (Debian `etcd-server`).
pub const DEFAULT_ETCD: &str = "/usr/bin/etcd";

/// A running etcd cluster; every member is killed and the temp dir removed on drop.
pub struct EtcdCluster {
    // Field order matters for drop: processes before the temp dir.
    members: Vec<ChildGuard>,
    ips: Vec<Ipv4Addr>,
    dir: TempDir,
}

/// The etcd binary to run: `$HD_BENCH_ETCD`, or [`DEFAULT_ETCD`].
pub fn etcd_binary() -> Result<PathBuf> {
    let path = std::env::var_os("HD_BENCH_ETCD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ETCD));
    if !path.is_file() {
        bail!(
            "etcd not found at {}: install it with `apt-get install -y etcd-server`, set \
             HD_BENCH_ETCD, or run with --skip-etcd",
            path.display()
        );
    }
    Ok(path)
}

impl EtcdCluster {
    /// Starts `n` members and waits until each accepts client connections.
    pub fn start(n: usize) -> Result<EtcdCluster> {
        let binary = etcd_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("hd-bench-etcd-")
            .tempdir()
            .context("creating the etcd temp dir")?;
        super::cleanup::track(dir.path());
        let ips = net::alloc_ips_with_ports(n, &[CLIENT_PORT, PEER_PORT]);
        let initial_cluster = ips
            .iter()
            .enumerate()
            .map(|(i, ip)| format!("e{}=http://{ip}:{PEER_PORT}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!(
            "hd-bench-{}",
            dir.path()
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
        let mut members = Vec::with_capacity(n);
        for (i, ip) in ips.iter().enumerate() {
            let name = format!("e{}", i + 1);
            let data = dir.path().join(format!("{name}.data"));
            let client = format!("http://{ip}:{CLIENT_PORT}");
            let peer = format!("http://{ip}:{PEER_PORT}");
            let args: Vec<String> = vec![
                "--name".into(),
                name.clone(),
                "--data-dir".into(),
                data.to_string_lossy().into_owned(),
                "--listen-client-urls".into(),
                client.clone(),
                "--advertise-client-urls".into(),
                client,
                "--listen-peer-urls".into(),
                peer.clone(),
                "--initial-advertise-peer-urls".into(),
                peer,
                "--initial-cluster".into(),
                initial_cluster.clone(),
                "--initial-cluster-token".into(),
                token.clone(),
                "--initial-cluster-state".into(),
                "new".into(),
                "--logger".into(),
                "zap".into(),
                "--log-level".into(),
                "warn".into(),
            ];
            let log = dir.path().join(format!("{name}.log"));
            members.push(ChildGuard::spawn(
                &format!("etcd {name}"),
                &binary,
                &args,
                &log,
                None,
            ));
        }
        let cluster = EtcdCluster { members, ips, dir };
        for addr in cluster.client_addrs() {
            if !net::wait_port(addr, Duration::from_secs(20)) {
                bail!(
                    "etcd did not listen on {addr} within 20s\n{}",
                    cluster.all_logs()
                );
            }
        }
        Ok(cluster)
    }

    /// Every member's client address.
    pub fn client_addrs(&self) -> Vec<SocketAddr> {
        self.ips
            .iter()
            .map(|ip| net::addr(*ip, CLIENT_PORT))
            .collect()
    }

    /// The end of every member's log, for error messages.
    pub fn all_logs(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("---- {} ----\n{}", m.name(), m.log_tail(3000)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The members' pids (for RSS readings).
    pub fn pids(&self) -> Vec<u32> {
        self.members.iter().map(ChildGuard::pid).collect()
    }

    /// The temp dir holding data and logs.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Waits until every member names the same leader and that leader confirms; returns the
    /// leader's client address.
    pub async fn leader(&self, timeout: Duration) -> Result<SocketAddr> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no answer yet");
        while Instant::now() < deadline {
            let mut seen = Vec::new();
            for addr in self.client_addrs() {
                match EtcdClient::new(addr)?.status().await {
                    Ok((me, leader)) => seen.push((addr, me, leader)),
                    Err(e) => last = format!("{addr}: {e}"),
                }
            }
            if seen.len() == self.ips.len() {
                let leader = seen[0].2;
                let agreed = leader != 0 && seen.iter().all(|(_, _, l)| *l == leader);
                if let Some((addr, _, _)) = seen.iter().find(|(_, me, _)| *me == leader) {
                    if agreed {
                        return Ok(*addr);
                    }
                }
                last = format!("members disagree on the leader: {seen:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(anyhow!(
            "etcd elected no leader within {timeout:?}; last: {last}\n{}",
            self.all_logs()
        ))
    }
}

/// VmRSS of every member, KiB (None where unreadable).
pub fn member_rss_kib(cluster: &EtcdCluster) -> Vec<Option<u64>> {
    cluster
        .pids()
        .into_iter()
        .map(|pid| super::machine::proc_status_kib(pid, "VmRSS"))
        .collect()
}
