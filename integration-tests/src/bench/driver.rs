//! Runs N benchmark clients concurrently: a warm-up phase, then a measured phase.
//!
//! Each client is a [`Pairer`], one of the two systems' clients, and owns its own connection.
//! Both phases start all clients together and wait for all of them, so the measured phase's wall
//! time is the time from the first client's first measured call to the last client's last
//! answer, and throughput is `measured pairs / wall`. Warm-up pairs (connection set-up, first
//! allocations, the leader's first proposals) are not counted.
//!
//! A client that fails keeps going (the failure is counted, not timed) until it has failed
//! [`MAX_ERRORS_PER_CLIENT`] times; then the phase is an error, because numbers from a cluster
//! that keeps failing would mislead.

use super::etcd_client::EtcdLocker;
use super::hd_client::HdClient;
use super::stats::{summarize, Summary};
use anyhow::{anyhow, bail, Result};
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// A client gives up its phase after this many failed pairs.
pub const MAX_ERRORS_PER_CLIENT: usize = 20;

/// One benchmark client of either system.
pub enum Pairer {
    /// Our coordinator: acquire + release of `host`'s slot.
    Hotdeploy {
        /// The client.
        client: HdClient,
        /// The pseudo-host whose slot it takes.
        host: String,
    },
    /// etcd: lock + unlock.
    Etcd(EtcdLocker),
    /// Diagnostic: two `Register` writes of `host`, the same raft write path as a lock pair
    /// without the leader's acquire queue.
    HotdeployRegisters {
        /// The client.
        client: HdClient,
        /// The pseudo-host re-registered.
        host: String,
        /// Its group.
        group: String,
    },
}

impl Pairer {
    /// One lock round trip.
    pub async fn pair(&mut self) -> Result<()> {
        match self {
            Pairer::Hotdeploy { client, host } => client.pair(host).await,
            Pairer::Etcd(locker) => locker.pair().await,
            Pairer::HotdeployRegisters {
                client,
                host,
                group,
            } => {
                let groups = std::slice::from_ref(group);
                client.register(host, groups).await?;
                client.register(host, groups).await
            }
        }
    }
}

/// One client's phase result.
struct ClientRun {
    samples: Vec<Duration>,
    errors: usize,
    first_error: Option<String>,
}

/// Runs `warmup` then `per_client` pairs on every client; returns the measured phase's summary
/// and the clients (for reuse).
pub async fn run(
    clients: Vec<Pairer>,
    warmup: usize,
    per_client: usize,
) -> Result<(Summary, Vec<Pairer>)> {
    let (_, clients, _) = phase(clients, warmup).await?;
    let (runs, clients, wall) = phase(clients, per_client).await?;
    let mut samples = Vec::with_capacity(per_client * clients.len());
    let mut errors = 0;
    for run in runs {
        samples.extend(run.samples);
        errors += run.errors;
    }
    Ok((summarize(samples, errors, wall), clients))
}

async fn phase(
    clients: Vec<Pairer>,
    count: usize,
) -> Result<(Vec<ClientRun>, Vec<Pairer>, Duration)> {
    let mut set = JoinSet::new();
    let start = Instant::now();
    for (i, mut client) in clients.into_iter().enumerate() {
        set.spawn(async move {
            let mut run = ClientRun {
                samples: Vec::with_capacity(count),
                errors: 0,
                first_error: None,
            };
            for _ in 0..count {
                let t = Instant::now();
                match client.pair().await {
                    Ok(()) => run.samples.push(t.elapsed()),
                    Err(e) => {
                        run.errors += 1;
                        run.first_error.get_or_insert_with(|| format!("{e:#}"));
                        if run.errors >= MAX_ERRORS_PER_CLIENT {
                            break;
                        }
                    }
                }
            }
            (i, run, client)
        });
    }
    let mut done = Vec::new();
    while let Some(joined) = set.join_next().await {
        done.push(joined.map_err(|e| anyhow!("a benchmark client task failed: {e}"))?);
    }
    let wall = start.elapsed();
    done.sort_by_key(|(i, _, _)| *i);
    let mut runs = Vec::with_capacity(done.len());
    let mut clients = Vec::with_capacity(done.len());
    for (i, run, client) in done {
        if run.errors >= MAX_ERRORS_PER_CLIENT {
            bail!(
                "client {i} failed {} times; first error: {}",
                run.errors,
                run.first_error.unwrap_or_default()
            );
        }
        if let Some(e) = &run.first_error {
            eprintln!(
                "hd-bench: client {i}: {} failed pairs; first: {e}",
                run.errors
            );
        }
        runs.push(run);
        clients.push(client);
    }
    Ok((runs, clients, wall))
}
