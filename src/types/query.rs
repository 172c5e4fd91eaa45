//! Prepared queries (`/v1/query`): a stored service lookup with its filters, run by ID or name
//! over HTTP (`/v1/query/<id-or-name>/execute`) and DNS (`<name>.query.consul`), optionally a
//! template that answers every name starting with its own.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::RaftIndexes;

/// The one template type Consul has.
pub const NAME_PREFIX_MATCH: &str = "name_prefix_match";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedQuery {
    pub id: String,
    /// Unique; empty for an anonymous query (which must be bound to a session) or the
    /// catch-all template.
    pub name: String,
    /// The query is deleted when this session ends.
    pub session: String,
    /// Executes with this token's rights instead of the caller's.
    pub token: String,
    pub template: QueryTemplate,
    pub service: ServiceQuery,
    /// `DNS.TTL` as written (a Go duration); empty for the agent's service TTL.
    pub dns_ttl: String,
    pub indexes: RaftIndexes,
}

impl PreparedQuery {
    pub fn is_template(&self) -> bool {
        !self.template.kind.is_empty()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryTemplate {
    /// `Type`: "" (not a template) or `name_prefix_match`.
    pub kind: String,
    /// Matched against the name asked for; its groups are `${match(N)}`.
    pub regexp: String,
    pub remove_empty_tags: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceQuery {
    pub service: String,
    /// `Failover.NearestN` and `Failover.Datacenters`: kept and shown; with one datacenter
    /// there is nowhere to fail over to.
    pub nearest_n: u32,
    pub datacenters: Vec<String>,
    /// Only passing instances; otherwise passing and warning.
    pub only_passing: bool,
    pub ignore_check_ids: Vec<String>,
    /// Sort by round-trip time from this node (`_agent`: the agent answering).
    pub near: String,
    /// Every one required; `!tag` excludes. Case-insensitive.
    pub tags: Vec<String>,
    pub node_meta: BTreeMap<String, String>,
    pub service_meta: BTreeMap<String, String>,
    /// Instances that take mesh traffic for the service instead of the service itself.
    pub connect: bool,
}

/// A change to the prepared-query table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueryOp {
    /// Creates or replaces the query with this ID.
    Set(Box<PreparedQuery>),
    Delete {
        id: String,
    },
}
