//! A minimal etcd v3 client: lease grant, lock, unlock and member status.
//!
//! Each call is a plain unary gRPC request through `tonic::client::Grpc` with
//! `tonic_prost::ProstCodec` over the hand-written messages of [`super::etcd_proto`]. One
//! [`EtcdClient`] is one channel (one HTTP/2 connection) to one member, mirroring
//! [`super::hd_client::HdClient`] so the two systems are measured the same way.
//!
//! The measured operation, [`EtcdLocker::pair`], is what an etcd user of the v3 concurrency API
//! does for one critical section: `Lock{name, lease}` returns an ownership key, and
//! `Unlock{key}` deletes it. The lease is granted once per client and reused, as the
//! `concurrency.Session` of etcd's own client does.

use super::etcd_proto::{
    paths, LeaseGrantRequest, LeaseGrantResponse, LockRequest, LockResponse, StatusRequest,
    StatusResponse, UnlockRequest, UnlockResponse,
};
use super::hd_client::{channel, status_error, CALL_TIMEOUT};
use anyhow::{anyhow, bail, Result};
use std::net::SocketAddr;
use tonic::client::Grpc;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;

/// One channel to one etcd member.
#[derive(Clone)]
pub struct EtcdClient {
    grpc: Grpc<Channel>,
}

impl EtcdClient {
    /// A lazily connecting client for the member serving clients at `addr`.
    pub fn new(addr: SocketAddr) -> Result<Self> {
        Ok(EtcdClient {
            grpc: Grpc::new(channel(&addr.to_string())?),
        })
    }

    async fn unary<Req, Resp>(&mut self, path: &'static str, req: Req) -> Result<Resp>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let call = async {
            self.grpc
                .ready()
                .await
                .map_err(|e| anyhow!("{path}: channel not ready: {e}"))?;
            let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
            self.grpc
                .unary(
                    tonic::Request::new(req),
                    PathAndQuery::from_static(path),
                    codec,
                )
                .await
                .map(tonic::Response::into_inner)
                .map_err(|s| status_error(path, &s))
        };
        tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .map_err(|_| anyhow!("{path}: no answer within {CALL_TIMEOUT:?}"))?
    }

    /// Grants a lease of `ttl_s` seconds; returns its id.
    pub async fn lease_grant(&mut self, ttl_s: i64) -> Result<i64> {
        let resp: LeaseGrantResponse = self
            .unary(paths::LEASE_GRANT, LeaseGrantRequest { ttl: ttl_s, id: 0 })
            .await?;
        if !resp.error.is_empty() {
            bail!("lease grant: {}", resp.error);
        }
        if resp.id == 0 {
            bail!("lease grant: the answer carries no lease id");
        }
        Ok(resp.id)
    }

    /// Locks `name` under `lease`; returns the ownership key.
    pub async fn lock(&mut self, name: &[u8], lease: i64) -> Result<Vec<u8>> {
        let req = LockRequest {
            name: name.to_vec(),
            lease,
        };
        let resp: LockResponse = self.unary(paths::LOCK, req).await?;
        if resp.key.is_empty() {
            bail!("lock: the answer carries no key");
        }
        Ok(resp.key)
    }

    /// Unlocks the ownership `key`.
    pub async fn unlock(&mut self, key: Vec<u8>) -> Result<()> {
        let _: UnlockResponse = self.unary(paths::UNLOCK, UnlockRequest { key }).await?;
        Ok(())
    }

    /// `(member id of the answering member, the leader it believes in)`.
    pub async fn status(&mut self) -> Result<(u64, u64)> {
        let resp: StatusResponse = self.unary(paths::STATUS, StatusRequest {}).await?;
        let me = resp.header.map(|h| h.member_id).unwrap_or_default();
        Ok((me, resp.leader))
    }

    /// The answering member's raft index (its last log entry).
    pub async fn raft_index(&mut self) -> Result<u64> {
        let resp: StatusResponse = self.unary(paths::STATUS, StatusRequest {}).await?;
        Ok(resp.raft_index)
    }
}

/// One benchmark client of etcd's lock API: a channel, a lease, and a lock name.
pub struct EtcdLocker {
    client: EtcdClient,
    lease: i64,
    name: Vec<u8>,
}

impl EtcdLocker {
    /// Connects to `addr` and grants this client's lease (`ttl_s` seconds).
    pub async fn new(addr: SocketAddr, name: &str, ttl_s: i64) -> Result<Self> {
        let mut client = EtcdClient::new(addr)?;
        let lease = client.lease_grant(ttl_s).await?;
        Ok(EtcdLocker {
            client,
            lease,
            name: name.as_bytes().to_vec(),
        })
    }

    /// One measured operation: lock, then unlock.
    pub async fn pair(&mut self) -> Result<()> {
        let key = self.client.lock(&self.name, self.lease).await?;
        self.client.unlock(key).await
    }
}
