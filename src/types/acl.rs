//! The ACL model replicated through Raft: tokens, policies and roles, as Consul keeps them.
//!
//! Links between them are stored by ID only (a policy may be renamed; its tokens follow it);
//! names are looked up when a link is shown. Times are wall-clock values the HTTP handler
//! chose before proposing the write, so applying stays deterministic.

use serde::{Deserialize, Serialize};

use super::RaftIndexes;

/// The built-in policy that grants everything.
pub const GLOBAL_MANAGEMENT_ID: &str = "00000000-0000-0000-0000-000000000001";
pub const GLOBAL_MANAGEMENT_NAME: &str = "global-management";
/// The built-in policy that reads everything.
pub const GLOBAL_READ_ONLY_ID: &str = "00000000-0000-0000-0000-000000000002";
pub const GLOBAL_READ_ONLY_NAME: &str = "builtin/global-read-only";
/// The token every request without one is made with.
pub const ANONYMOUS_ACCESSOR: &str = "00000000-0000-0000-0000-000000000002";
pub const ANONYMOUS_SECRET: &str = "anonymous";
/// IDs with this prefix are Consul's to give out.
pub const RESERVED_PREFIX: &str = "00000000-0000-0000-0000-0000000000";

/// A service identity: `builtin/service` for one service, in some datacenters (all if none).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceIdentity {
    pub service_name: String,
    pub datacenters: Vec<String>,
}

/// A node identity: `builtin/node` for one node in one datacenter.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeIdentity {
    pub node_name: String,
    pub datacenter: String,
}

/// A templated policy (`builtin/service`, `builtin/node`, `builtin/dns`) with its variable.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplatedPolicy {
    pub template_name: String,
    /// `TemplateVariables.Name`; empty for templates without one.
    pub name: String,
    pub datacenters: Vec<String>,
}

/// What a token or a role grants: policies and roles by ID, and identities.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grants {
    pub policies: Vec<String>,
    pub service_identities: Vec<ServiceIdentity>,
    pub node_identities: Vec<NodeIdentity>,
    pub templated_policies: Vec<TemplatedPolicy>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    pub accessor_id: String,
    pub secret_id: String,
    pub description: String,
    pub grants: Grants,
    pub roles: Vec<String>,
    pub local: bool,
    /// RFC 3339; empty when the token never expires.
    pub expiration_time: String,
    /// Unix nanoseconds of `expiration_time` (0 = never), for the reaper and resolution.
    pub expires_at_nanos: i64,
    /// RFC 3339 with nanoseconds.
    pub create_time: String,
    pub hash: String,
    pub indexes: RaftIndexes,
}

impl Token {
    /// Whether the token has expired at `now` (Unix nanoseconds).
    pub fn expired(&self, now_nanos: i64) -> bool {
        self.expires_at_nanos != 0 && self.expires_at_nanos <= now_nanos
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub id: String,
    pub name: String,
    pub description: String,
    pub rules: String,
    pub datacenters: Vec<String>,
    pub hash: String,
    pub indexes: RaftIndexes,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    pub id: String,
    pub name: String,
    pub description: String,
    pub grants: Grants,
    pub hash: String,
    pub indexes: RaftIndexes,
}

/// ACL writes, one `Command::Acl` each. Sets are create-or-replace; `cas` of `Some(0)`
/// creates only (the leader seeds the built-ins that way, so a renamed one is kept).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AclOp {
    TokenSet {
        token: Box<Token>,
        cas: Option<u64>,
    },
    TokenDelete {
        accessor_id: String,
    },
    PolicySet {
        policy: Box<Policy>,
        cas: Option<u64>,
    },
    PolicyDelete {
        id: String,
    },
    RoleSet {
        role: Box<Role>,
        cas: Option<u64>,
    },
    RoleDelete {
        id: String,
    },
    /// The one-time bootstrap: applies only while no bootstrap happened since the index given
    /// (0 = never bootstrapped; else the reset index the operator wrote). Records this index.
    Bootstrap {
        token: Box<Token>,
        reset_index: u64,
    },
}
