//! Operator state: autopilot's configuration (replicated through Raft, as Consul keeps it)
//! and the health report the leader's autopilot produces from it.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::RaftIndexes;

/// Consul's autopilot configuration. A server's `autopilot` config stanza seeds it when the
/// first leader takes office; after that only `PUT /v1/operator/autopilot/configuration`
/// changes it. The enterprise-only fields are kept and echoed, and change nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutopilotConfig {
    /// Remove failed servers from the Raft configuration (never below quorum or `min_quorum`).
    pub cleanup_dead_servers: bool,
    /// A server the leader has not heard from for longer is unhealthy.
    pub last_contact_threshold: Duration,
    /// A server further behind the leader's log is unhealthy.
    pub max_trailing_logs: u64,
    /// Dead-server cleanup never leaves fewer voters than this.
    pub min_quorum: u32,
    /// How long a new server stays healthy before it is made a voter.
    pub server_stabilization_time: Duration,
    pub redundancy_zone_tag: String,
    pub disable_upgrade_migration: bool,
    pub upgrade_version_tag: String,
    pub indexes: RaftIndexes,
}

impl Default for AutopilotConfig {
    /// Consul's defaults.
    fn default() -> Self {
        AutopilotConfig {
            cleanup_dead_servers: true,
            last_contact_threshold: Duration::from_millis(200),
            max_trailing_logs: 250,
            min_quorum: 0,
            server_stabilization_time: Duration::from_secs(10),
            redundancy_zone_tag: String::new(),
            disable_upgrade_migration: false,
            upgrade_version_tag: String::new(),
            indexes: RaftIndexes::default(),
        }
    }
}

/// How one server of the Raft configuration looks to the leader's autopilot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerHealth {
    pub raft_id: u64,
    /// The node id (UUID) from the server's LAN member, or the Raft id in hex when unknown.
    pub id: String,
    /// The node name, empty when the server is not in the LAN pool.
    pub name: String,
    pub address: String,
    /// `alive`, `failed`, `left`, or `none` when the pool does not know the server.
    pub serf_status: String,
    pub version: String,
    pub leader: bool,
    pub voter: bool,
    /// Since the leader last heard from the server (zero for the leader itself); `None`
    /// when it never did.
    pub last_contact: Option<Duration>,
    pub last_term: u64,
    pub last_index: u64,
    pub healthy: bool,
    /// When the server's `healthy` last changed (or when this leader first looked).
    pub stable_since: SystemTime,
}

/// The leader's autopilot report (`/v1/operator/autopilot/health` and `/state`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutopilotReport {
    /// Every server is healthy.
    pub healthy: bool,
    /// How many voters could fail with the cluster still able to elect a leader, counting
    /// only healthy voters.
    pub failure_tolerance: u32,
    /// The same, counting every voter that is alive in the pool.
    pub optimistic_failure_tolerance: u32,
    pub servers: Vec<ServerHealth>,
}
