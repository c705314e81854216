//! The few etcd v3 messages the benchmark sends, written by hand as prost structs.
//!
//! Generating them would need etcd's .proto files and their gogoproto/google.api imports, and a
//! protoc; the brief (and DESIGN §1: a fresh clone needs nothing outside cargo) rules that out.
//! Protobuf only needs field numbers and wire types to agree, and unknown fields are skipped on
//! decode, so each struct declares just the fields we read or write. The numbers follow etcd
//! 3.4's `etcdserver/etcdserverpb/rpc.proto` and `etcdserver/api/v3lock/v3lockpb/v3lock.proto`:
//!
//! - `etcdserverpb.ResponseHeader{cluster_id uint64 = 1, member_id uint64 = 2, revision int64 =
//!   3, raft_term uint64 = 4}`
//! - `etcdserverpb.LeaseGrantRequest{TTL int64 = 1, ID int64 = 2}`,
//!   `LeaseGrantResponse{header = 1, ID int64 = 2, TTL int64 = 3, error string = 4}`
//! - `etcdserverpb.StatusRequest{}`, `StatusResponse{header = 1, version string = 2, dbSize
//!   int64 = 3, leader uint64 = 4, raftIndex uint64 = 5, raftTerm uint64 = 6}` (later fields
//!   are skipped)
//! - `v3lockpb.LockRequest{name bytes = 1, lease int64 = 2}`, `LockResponse{header = 1, key
//!   bytes = 2}`, `UnlockRequest{key bytes = 1}`, `UnlockResponse{header = 1}`
//!
//! The gRPC paths are `/<package>.<Service>/<Method>`, listed in [`paths`].

/// gRPC method paths.
pub mod paths {
    /// `Lease.LeaseGrant`.
    pub const LEASE_GRANT: &str = "/etcdserverpb.Lease/LeaseGrant";
    /// `Maintenance.Status`.
    pub const STATUS: &str = "/etcdserverpb.Maintenance/Status";
    /// `Lock.Lock`.
    pub const LOCK: &str = "/v3lockpb.Lock/Lock";
    /// `Lock.Unlock`.
    pub const UNLOCK: &str = "/v3lockpb.Lock/Unlock";
}

/// `etcdserverpb.ResponseHeader`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ResponseHeader {
    /// The cluster's id.
    #[prost(uint64, tag = "1")]
    pub cluster_id: u64,
    /// The id of the member that answered.
    #[prost(uint64, tag = "2")]
    pub member_id: u64,
    /// The store revision when the request was applied.
    #[prost(int64, tag = "3")]
    pub revision: i64,
    /// The raft term when the request was applied.
    #[prost(uint64, tag = "4")]
    pub raft_term: u64,
}

/// `etcdserverpb.LeaseGrantRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LeaseGrantRequest {
    /// Advisory time to live, seconds.
    #[prost(int64, tag = "1")]
    pub ttl: i64,
    /// Requested lease id; 0 lets the server choose.
    #[prost(int64, tag = "2")]
    pub id: i64,
}

/// `etcdserverpb.LeaseGrantResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LeaseGrantResponse {
    /// The header.
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    /// The granted lease id.
    #[prost(int64, tag = "2")]
    pub id: i64,
    /// The server-chosen TTL, seconds.
    #[prost(int64, tag = "3")]
    pub ttl: i64,
    /// Non-empty when the grant failed.
    #[prost(string, tag = "4")]
    pub error: String,
}

/// `etcdserverpb.StatusRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StatusRequest {}

/// `etcdserverpb.StatusResponse` (the fields we read).
#[derive(Clone, PartialEq, prost::Message)]
pub struct StatusResponse {
    /// The header; `member_id` says who answered.
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    /// The server version.
    #[prost(string, tag = "2")]
    pub version: String,
    /// The backend database size, bytes.
    #[prost(int64, tag = "3")]
    pub db_size: i64,
    /// The member id the answering member believes is the leader.
    #[prost(uint64, tag = "4")]
    pub leader: u64,
    /// The answering member's raft index.
    #[prost(uint64, tag = "5")]
    pub raft_index: u64,
    /// The answering member's raft term.
    #[prost(uint64, tag = "6")]
    pub raft_term: u64,
}

/// `v3lockpb.LockRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LockRequest {
    /// The lock's name.
    #[prost(bytes = "vec", tag = "1")]
    pub name: Vec<u8>,
    /// The lease the ownership key is attached to.
    #[prost(int64, tag = "2")]
    pub lease: i64,
}

/// `v3lockpb.LockResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LockResponse {
    /// The header.
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    /// The ownership key; unlock with it.
    #[prost(bytes = "vec", tag = "2")]
    pub key: Vec<u8>,
}

/// `v3lockpb.UnlockRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UnlockRequest {
    /// The ownership key from [`LockResponse::key`].
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
}

/// `v3lockpb.UnlockResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UnlockResponse {
    /// The header.
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn wire_layout_matches_etcd() {
        // LockRequest{name: "a", lease: 1}: field 1 length-delimited, field 2 varint.
        let bytes = LockRequest {
            name: b"a".to_vec(),
            lease: 1,
        }
        .encode_to_vec();
        assert_eq!(bytes, vec![0x0a, 0x01, b'a', 0x10, 0x01]);
        // LeaseGrantRequest{TTL: 60}: field 1 varint.
        let bytes = LeaseGrantRequest { ttl: 60, id: 0 }.encode_to_vec();
        assert_eq!(bytes, vec![0x08, 60]);
    }
}
