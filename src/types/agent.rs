//! What an agent is told to run: service definitions with their checks, as domain data.
//! Parsed from config files and `/v1/agent/*/register` bodies by `api::definition`.

use std::time::Duration;

use super::{HealthStatus, Service};

/// A service registered with this agent, and the checks defined inside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceDefinition {
    pub service: Service,
    pub checks: Vec<CheckDefinition>,
    /// `connect { sidecar_service {} }`: the sidecar proxy registered with (and removed
    /// with) this service. Its port is 0 until the agent assigns one from the sidecar range.
    pub sidecar: Option<Box<ServiceDefinition>>,
}

/// How a check decides its status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckKind {
    Http {
        url: String,
        method: String,
        headers: Vec<(String, String)>,
        body: String,
        tls_skip_verify: bool,
    },
    Tcp {
        address: String,
    },
    Udp {
        address: String,
    },
    Script {
        args: Vec<String>,
    },
    /// Passing only while something keeps calling `/v1/agent/check/pass` within `ttl`.
    Ttl {
        ttl: Duration,
    },
    /// Node or service maintenance: critical for as long as it exists; nothing runs.
    Maintenance,
    /// Mirrors the health of a service (`service` id) or of a whole node, read from the
    /// catalog; `node` empty means this agent's node.
    Alias {
        node: String,
        service: String,
    },
}

impl CheckKind {
    /// Consul's `Type` field.
    pub fn type_name(&self) -> &'static str {
        match self {
            CheckKind::Http { .. } => "http",
            CheckKind::Tcp { .. } => "tcp",
            CheckKind::Udp { .. } => "udp",
            CheckKind::Script { .. } => "script",
            CheckKind::Ttl { .. } => "ttl",
            CheckKind::Maintenance => "maintenance",
            CheckKind::Alias { .. } => "alias",
        }
    }
}

/// One check this agent runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckDefinition {
    pub id: String,
    pub name: String,
    pub notes: String,
    /// Empty for a node-level check.
    pub service_id: String,
    pub initial_status: HealthStatus,
    pub kind: CheckKind,
    /// Zero for TTL checks.
    pub interval: Duration,
    pub timeout: Duration,
    pub deregister_critical_after: Option<Duration>,
    pub success_before_passing: u32,
    pub failures_before_warning: u32,
    pub failures_before_critical: u32,
    pub output_max_size: usize,
}
