//! The raw config: every key concord understands, exactly as written in Consul's JSON and HCL
//! config files (snake_case), all optional. Merging and validation happen in `config`.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Clone, Debug, Default, Deserialize)]
pub struct RawConfig {
    pub datacenter: Option<String>,
    pub primary_datacenter: Option<String>,
    pub data_dir: Option<String>,
    pub node_name: Option<String>,
    pub node_id: Option<String>,
    pub node_meta: Option<BTreeMap<String, String>>,
    /// Where this agent runs; its node and the services registered with it carry it.
    pub locality: Option<RawLocality>,
    pub server: Option<bool>,
    pub bootstrap: Option<bool>,
    pub bootstrap_expect: Option<u32>,
    pub bind_addr: Option<String>,
    pub client_addr: Option<String>,
    pub advertise_addr: Option<String>,
    pub log_level: Option<String>,
    pub log_json: Option<bool>,
    pub ports: Option<RawPorts>,
    pub limits: Option<RawLimits>,
    pub performance: Option<RawPerformance>,
    pub autopilot: Option<RawAutopilot>,
    pub raft_snapshot_threshold: Option<u64>,
    pub raft_trailing_logs: Option<u64>,
    pub default_query_time: Option<String>,
    pub max_query_time: Option<String>,
    pub disable_update_check: Option<bool>,
    pub ui_config: Option<RawUi>,
    pub telemetry: Option<RawTelemetry>,
    pub enable_debug: Option<bool>,
    pub enable_script_checks: Option<bool>,
    pub enable_local_script_checks: Option<bool>,
    /// How often anti-entropy runs a full sync (Consul's `ae_interval`).
    pub ae_interval: Option<String>,
    /// How often a check whose output changed but status did not is synced to the catalog.
    pub check_update_interval: Option<String>,
    /// Set by `-dev`; not a Consul config key, but carried with the other sources so that
    /// flags, files and dev defaults go through one merge.
    pub dev_mode: Option<bool>,
    pub connect: Option<RawConnect>,
    /// `allow` or `deny`: what applies when no intention matches (else the ACL default).
    pub default_intention_policy: Option<String>,
    pub config_entries: Option<RawConfigEntries>,
    /// The DNS domain (`consul.` by default) and an optional second one answered alike.
    pub domain: Option<String>,
    pub alt_domain: Option<String>,
    /// Upstream DNS servers for names outside the domain (`ip` or `ip:port`, port 53 default).
    pub recursors: Option<Vec<String>>,
    pub addresses: Option<RawAddresses>,
    pub dns_config: Option<RawDnsConfig>,
    /// LAN members to join at start (an unreachable one stops the agent).
    pub start_join: Option<Vec<String>>,
    /// LAN members to join, retried until one answers.
    pub retry_join: Option<Vec<String>>,
    pub retry_interval: Option<String>,
    pub retry_max: Option<u32>,
    /// The same for a server's WAN pool (servers of other datacenters).
    pub start_join_wan: Option<Vec<String>>,
    pub retry_join_wan: Option<Vec<String>>,
    pub retry_interval_wan: Option<String>,
    pub retry_max_wan: Option<u32>,
    pub encrypt: Option<String>,
    pub sync_coordinate_interval_min: Option<String>,
    /// Consul's agent watches (see `config::watches`).
    pub watches: Option<Vec<serde_json::Value>>,
    pub encrypt_verify_incoming: Option<bool>,
    pub encrypt_verify_outgoing: Option<bool>,
    pub leave_on_terminate: Option<bool>,
    pub skip_leave_on_interrupt: Option<bool>,
    /// How long a failed member stays before it is reaped.
    pub reconnect_timeout: Option<String>,
    /// LAN gossip timings (Consul's `gossip_lan`).
    pub gossip_lan: Option<RawGossip>,
    pub acl: Option<RawAcl>,
    /// Consul's `tls` stanza (see `config::tls_config`).
    pub tls: Option<RawTls>,
    pub auto_encrypt: Option<RawAutoEncrypt>,
    /// The flat TLS keys from before Consul 1.12, mapped onto `tls`.
    pub ca_file: Option<String>,
    pub ca_path: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    pub verify_incoming: Option<bool>,
    pub verify_incoming_rpc: Option<bool>,
    pub verify_incoming_https: Option<bool>,
    pub verify_outgoing: Option<bool>,
    pub verify_server_hostname: Option<bool>,
    pub tls_min_version: Option<String>,
    pub tls_cipher_suites: Option<String>,
    /// Ignored by Go since 1.17 and by rustls; accepted so old files load.
    pub tls_prefer_server_cipher_suites: Option<bool>,
}

/// `tls { defaults internal_rpc https grpc }`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RawTls {
    pub defaults: Option<RawTlsProtocol>,
    pub internal_rpc: Option<RawTlsProtocol>,
    pub https: Option<RawTlsProtocol>,
    pub grpc: Option<RawTlsProtocol>,
}

/// One `tls` sub-stanza; which keys each allows is checked when it is resolved.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RawTlsProtocol {
    pub ca_file: Option<String>,
    pub ca_path: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    pub verify_incoming: Option<bool>,
    pub verify_outgoing: Option<bool>,
    pub verify_server_hostname: Option<bool>,
    pub tls_min_version: Option<String>,
    pub tls_cipher_suites: Option<String>,
    pub use_auto_cert: Option<bool>,
}

/// `auto_encrypt { tls allow_tls dns_san ip_san }`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RawAutoEncrypt {
    pub tls: Option<bool>,
    pub allow_tls: Option<bool>,
    pub dns_san: Option<Vec<String>>,
    pub ip_san: Option<Vec<String>>,
}

/// Consul's `acl` stanza.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RawAcl {
    pub enabled: Option<bool>,
    pub default_policy: Option<String>,
    pub down_policy: Option<String>,
    pub enable_key_list_policy: Option<bool>,
    pub enable_token_persistence: Option<bool>,
    pub enable_token_replication: Option<bool>,
    /// Cache lifetimes Consul's clients use; concord's agents read the replicated tables and
    /// drop every cached resolution when they change, so these are accepted and unused.
    pub token_ttl: Option<String>,
    pub policy_ttl: Option<String>,
    pub role_ttl: Option<String>,
    pub tokens: Option<RawAclTokens>,
}

/// `acl.tokens`; `master` and `agent_master` are the pre-1.11 names.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RawAclTokens {
    pub initial_management: Option<String>,
    pub master: Option<String>,
    pub agent: Option<String>,
    pub default: Option<String>,
    pub dns: Option<String>,
    pub agent_recovery: Option<String>,
    pub agent_master: Option<String>,
    pub replication: Option<String>,
    pub config_file_service_registration: Option<String>,
}

/// Consul's `gossip_lan` block: memberlist's timings.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RawGossip {
    pub gossip_nodes: Option<u32>,
    pub gossip_interval: Option<String>,
    pub probe_interval: Option<String>,
    pub probe_timeout: Option<String>,
    pub suspicion_mult: Option<u32>,
    pub retransmit_mult: Option<u32>,
}

/// Per-listener bind addresses; each falls back to `client_addr`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RawAddresses {
    pub dns: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct RawDnsConfig {
    pub allow_stale: Option<bool>,
    pub max_stale: Option<String>,
    pub node_ttl: Option<String>,
    /// Service name (exact, `prefix*`, or `*`) -> TTL.
    pub service_ttl: Option<BTreeMap<String, String>>,
    pub udp_answer_limit: Option<u32>,
    pub a_record_limit: Option<u32>,
    pub enable_truncate: Option<bool>,
    pub only_passing: Option<bool>,
    pub recursor_timeout: Option<String>,
    pub recursor_strategy: Option<String>,
    pub enable_additional_node_meta_txt: Option<bool>,
    pub soa: Option<RawSoa>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct RawSoa {
    pub refresh: Option<u32>,
    pub retry: Option<u32>,
    pub expire: Option<u32>,
    pub min_ttl: Option<u32>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct RawConnect {
    pub enabled: Option<bool>,
    pub ca_provider: Option<String>,
    /// Keys as in `/v1/connect/ca/configuration`'s `Config`, in any spelling
    /// (`leaf_cert_ttl`, `LeafCertTTL`); checked by `connect::ca_config`.
    pub ca_config: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct RawConfigEntries {
    /// Entries written by the leader when it takes office, unless one of the same kind and
    /// name exists.
    pub bootstrap: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct RawPorts {
    pub http: Option<i32>,
    pub https: Option<i32>,
    pub dns: Option<i32>,
    pub grpc: Option<i32>,
    pub grpc_tls: Option<i32>,
    pub serf_lan: Option<i32>,
    pub serf_wan: Option<i32>,
    pub server: Option<i32>,
    pub sidecar_min_port: Option<i32>,
    pub sidecar_max_port: Option<i32>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct RawLimits {
    pub kv_max_value_size: Option<u64>,
    pub txn_max_req_len: Option<u64>,
    /// concord's own: the largest request body any endpoint reads (other than KV values and
    /// transactions, which have their own limits).
    pub http_max_body_size: Option<u64>,
    /// concord's own: the largest snapshot archive `PUT /v1/snapshot` restores.
    pub snapshot_max_size: Option<u64>,
    /// concord's own: how long a client may take to send a request body.
    pub http_body_timeout: Option<String>,
    /// concord's own: concurrent gRPC streams per connection on the xDS port (Consul: 2048).
    pub xds_max_streams: Option<u64>,
    /// concord's own: how long a DNS TCP connection may sit without completing a query.
    pub dns_tcp_idle_timeout: Option<String>,
    /// concord's own: DNS TCP connections served at once; more wait in the kernel's backlog.
    pub dns_max_tcp_connections: Option<u64>,
    /// concord's own: how long the agent keeps a leaf certificate nobody holds, for a service
    /// not registered on it (one registered here keeps its certificate).
    pub connect_leaf_idle_timeout: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct RawPerformance {
    pub raft_multiplier: Option<u32>,
}

/// Consul's `autopilot` stanza: the configuration the first leader seeds the cluster with.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RawAutopilot {
    pub cleanup_dead_servers: Option<bool>,
    pub last_contact_threshold: Option<String>,
    pub max_trailing_logs: Option<u64>,
    pub min_quorum: Option<u32>,
    pub server_stabilization_time: Option<String>,
    pub redundancy_zone_tag: Option<String>,
    pub disable_upgrade_migration: Option<bool>,
    pub upgrade_version_tag: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct RawLocality {
    pub region: Option<String>,
    pub zone: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct RawUi {
    pub enabled: Option<bool>,
    /// Serve the UI's files from this directory instead of the copy built into the binary.
    pub dir: Option<String>,
    pub content_path: Option<String>,
}

/// Consul's `telemetry` stanza, the keys concord acts on. Sinks other than Prometheus (statsd,
/// dogstatsd, circonus) are not built: their keys draw the unknown-key warning at start.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RawTelemetry {
    pub prometheus_retention_time: Option<String>,
    pub disable_hostname: Option<bool>,
    pub metrics_prefix: Option<String>,
    pub prefix_filter: Option<Vec<String>>,
    pub filter_default: Option<bool>,
}
