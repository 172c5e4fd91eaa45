//! Agent configuration, flowing one way: sources (dev defaults, config files and dirs, `-hcl`
//! fragments, flags) -> one merged raw config -> a validated `RuntimeConfig` with a sub-struct
//! per subsystem. Nothing reads raw config after this module.
//!
//! Unknown keys are reported as warnings naming the source and the key, never ignored
//! silently; a value of the wrong type, or an invalid one, is an error naming the source.

pub mod dns_config;
pub mod raw;
pub mod redact;
pub mod sources;
mod tls_config;
pub mod watches;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};

use crate::api::definition::{self, DefinitionPolicy};
use crate::api::DecodeError;
use crate::types::agent::{CheckDefinition, ServiceDefinition};
use crate::types::duration::parse_go_duration;
use raw::RawConfig;
use sources::{Format, Source};

/// Where config comes from, in the order the sources were given.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    pub dev: bool,
    /// `-config-file` and `-config-dir` arguments, in command-line order.
    pub paths: Vec<ConfigPath>,
    pub hcl_fragments: Vec<String>,
    pub format: Option<String>,
    /// Flag values as a JSON object of config keys, merged last.
    pub flags: Value,
}

#[derive(Clone, Debug)]
pub enum ConfigPath {
    File(PathBuf),
    Dir(PathBuf),
}

/// A gossip pool's timings: memberlist's (Consul's `gossip_lan` / `gossip_wan` blocks) and
/// Serf's reap timeouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GossipTimings {
    #[serde(serialize_with = "serialize_duration")]
    pub probe_interval: Duration,
    #[serde(serialize_with = "serialize_duration")]
    pub probe_timeout: Duration,
    pub suspicion_mult: u32,
    #[serde(serialize_with = "serialize_duration")]
    pub gossip_interval: Duration,
    pub gossip_nodes: u32,
    pub retransmit_mult: u32,
    /// How often a member exchanges full state with a random other.
    #[serde(serialize_with = "serialize_duration")]
    pub push_pull_interval: Duration,
    /// How long a failed member stays listed (and in the catalog, critical) before it is
    /// reaped (Consul's `reconnect_timeout`, 72 h).
    #[serde(serialize_with = "serialize_duration")]
    pub reconnect_timeout: Duration,
    /// How long a member that left stays listed as `left` (Serf's tombstone timeout, 24 h).
    #[serde(serialize_with = "serialize_duration")]
    pub tombstone_timeout: Duration,
    /// How often a failed member is tried again (Serf's reconnect interval, 30 s).
    #[serde(serialize_with = "serialize_duration")]
    pub reconnect_interval: Duration,
}

impl GossipTimings {
    /// A datacenter's LAN (memberlist's `DefaultLANConfig`).
    pub const LAN: GossipTimings = GossipTimings {
        probe_interval: Duration::from_secs(1),
        probe_timeout: Duration::from_millis(500),
        suspicion_mult: 4,
        gossip_interval: Duration::from_millis(200),
        gossip_nodes: 3,
        retransmit_mult: 4,
        push_pull_interval: Duration::from_secs(30),
        reconnect_timeout: Duration::from_secs(72 * 3600),
        tombstone_timeout: Duration::from_secs(24 * 3600),
        reconnect_interval: Duration::from_secs(30),
    };
    /// Servers across datacenters (`DefaultWANConfig`).
    pub const WAN: GossipTimings = GossipTimings {
        probe_interval: Duration::from_secs(5),
        probe_timeout: Duration::from_secs(3),
        suspicion_mult: 6,
        gossip_interval: Duration::from_millis(500),
        gossip_nodes: 4,
        retransmit_mult: 4,
        push_pull_interval: Duration::from_secs(60),
        reconnect_timeout: Duration::from_secs(72 * 3600),
        tombstone_timeout: Duration::from_secs(24 * 3600),
        reconnect_interval: Duration::from_secs(30),
    };
    /// One machine: `-dev` and tests (`DefaultLocalConfig`).
    pub const LOCAL: GossipTimings = GossipTimings {
        probe_interval: Duration::from_secs(1),
        probe_timeout: Duration::from_millis(200),
        suspicion_mult: 3,
        gossip_interval: Duration::from_millis(100),
        gossip_nodes: 3,
        retransmit_mult: 2,
        push_pull_interval: Duration::from_secs(15),
        reconnect_timeout: Duration::from_secs(72 * 3600),
        tombstone_timeout: Duration::from_secs(24 * 3600),
        reconnect_interval: Duration::from_secs(30),
    };
}

/// Which members of a pool to join, and how persistently.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Joins {
    /// Joined at start; if none answers, the agent does not start.
    pub start_join: Vec<String>,
    /// Joined in the background, every `retry_interval`, until one answers.
    pub retry_join: Vec<String>,
    #[serde(serialize_with = "serialize_duration")]
    pub retry_interval: Duration,
    /// Attempts before giving up (and stopping the agent); 0 retries forever.
    pub retry_max: u32,
}

/// How this agent joins the LAN pool (and a server the WAN pool) and leaves it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Membership {
    /// The LAN pool's joins (Consul's top-level `start_join`, `retry_join`, ...).
    #[serde(flatten)]
    pub lan: Joins,
    /// A server's joins of the WAN pool (`start_join_wan`, `retry_join_wan`, ...).
    pub wan: Joins,
    /// Leave the pool on SIGTERM (clients by default).
    pub leave_on_terminate: bool,
    /// Do not leave on SIGINT (servers by default).
    pub skip_leave_on_interrupt: bool,
    pub gossip_lan: GossipTimings,
    /// The gossip encryption key (base64), unless the data dir's keyring file supersedes it.
    pub encrypt: Option<String>,
    pub encrypt_verify_incoming: bool,
    pub encrypt_verify_outgoing: bool,
    /// How often, at least, the agent sends its network coordinate to the servers (Consul's
    /// `sync_coordinate_interval_min`, 15 s; longer in large pools, 64 updates/s in all).
    #[serde(serialize_with = "serialize_duration")]
    pub sync_coordinate_interval: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Ports {
    pub http: Option<u16>,
    pub dns: Option<u16>,
    pub grpc: Option<u16>,
    /// The HTTPS API (`ports.https`, off by default; 8501 by convention).
    pub https: Option<u16>,
    /// xDS over TLS (`ports.grpc_tls`): 8503 when `tls.grpc` has a certificate, else off.
    #[serde(rename = "GRPCTLS")]
    pub grpc_tls: Option<u16>,
    pub serf_lan: Option<u16>,
    pub serf_wan: Option<u16>,
    pub server: Option<u16>,
    /// Range a `sidecar_service` without a port gets its port from; `None` turns
    /// auto-assignment off.
    pub sidecar_min_port: Option<u16>,
    pub sidecar_max_port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Limits {
    pub kv_max_value_size: usize,
    pub txn_max_req_len: usize,
    pub txn_max_ops: usize,
    pub http_max_body_size: usize,
    pub snapshot_max_size: usize,
    #[serde(serialize_with = "serialize_duration")]
    pub http_body_timeout: Duration,
    pub xds_max_streams: u32,
    #[serde(serialize_with = "serialize_duration")]
    pub dns_tcp_idle_timeout: Duration,
    pub dns_max_tcp_connections: usize,
    #[serde(serialize_with = "serialize_duration")]
    pub connect_leaf_idle_timeout: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct QueryLimits {
    #[serde(serialize_with = "serialize_duration")]
    pub default_query_time: Duration,
    #[serde(serialize_with = "serialize_duration")]
    pub max_query_time: Duration,
}

/// Raft tuning: Consul's `performance.raft_multiplier` (scales every timeout),
/// `raft_snapshot_threshold` and `raft_trailing_logs`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RaftConfig {
    pub multiplier: u32,
    pub snapshot_threshold: u64,
    pub trailing_logs: u64,
}

/// The `telemetry` stanza (see `crate::telemetry`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Telemetry {
    /// How long a series nobody updates stays in the Prometheus output; zero keeps it forever.
    #[serde(serialize_with = "serialize_duration")]
    pub prometheus_retention_time: Duration,
    /// When false (Consul's default) gauge names carry this machine's hostname.
    pub disable_hostname: bool,
    /// The first segment of every metric name (`consul`).
    pub metrics_prefix: String,
    /// `+prefix` allows and `-prefix` blocks the metrics whose dotted name (with the
    /// prefix) starts so; the longest matching prefix decides.
    pub prefix_filter: Vec<String>,
    /// Whether a metric no filter matches is kept (Consul: true).
    pub filter_default: bool,
}

fn telemetry(raw: raw::RawTelemetry) -> Result<Telemetry, String> {
    let metrics_prefix = raw.metrics_prefix.unwrap_or_else(|| "consul".to_string());
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | ':');
    if metrics_prefix.is_empty() || !metrics_prefix.chars().all(valid) {
        return Err(format!(
            "telemetry.metrics_prefix {metrics_prefix:?} may hold only letters, digits, '_', '.', '-' and ':'"
        ));
    }
    let prefix_filter = raw.prefix_filter.unwrap_or_default();
    if let Some(bad) = prefix_filter
        .iter()
        .find(|rule| !(rule.starts_with('+') || rule.starts_with('-')) || rule.len() < 2)
    {
        return Err(format!(
            "telemetry.prefix_filter: {bad:?} must be a metric name prefix after '+' (allow) or '-' (block)"
        ));
    }
    Ok(Telemetry {
        prometheus_retention_time: duration(
            "telemetry.prometheus_retention_time",
            raw.prometheus_retention_time.as_deref(),
            Duration::ZERO,
        )?,
        disable_hostname: raw.disable_hostname.unwrap_or(false),
        metrics_prefix,
        prefix_filter,
        filter_default: raw.filter_default.unwrap_or(true),
    })
}

/// The validated configuration every subsystem reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RuntimeConfig {
    pub dev_mode: bool,
    pub datacenter: String,
    pub primary_datacenter: String,
    pub node_name: String,
    /// Configured node id; when absent the agent uses the one persisted in the data dir.
    #[serde(rename = "NodeID")]
    pub node_id: Option<String>,
    pub node_meta: BTreeMap<String, String>,
    /// `locality { region zone }`: the node's, and the default of services registered here.
    pub locality: Option<crate::types::Locality>,
    pub data_dir: Option<PathBuf>,
    pub server_mode: bool,
    pub bootstrap_expect: u32,
    pub bind_addr: IpAddr,
    pub advertise_addr: IpAddr,
    pub client_addrs: Vec<IpAddr>,
    pub ports: Ports,
    pub membership: Membership,
    /// Watches the agent runs against its own HTTP API.
    pub watches: Vec<watches::WatchConfig>,
    pub dns: dns_config::DnsConfig,
    pub limits: Limits,
    pub query: QueryLimits,
    pub raft: RaftConfig,
    /// The `autopilot` stanza: what the first leader seeds the cluster's autopilot
    /// configuration with (later changed only through the API, as in Consul).
    #[serde(serialize_with = "serialize_autopilot")]
    pub autopilot: crate::types::operator::AutopilotConfig,
    /// The `tls` and `auto_encrypt` stanzas, resolved per protocol.
    #[serde(rename = "TLS")]
    pub tls: crate::tls::TlsConfig,
    /// The `acl` stanza; left out of the runtime config shown over HTTP (it holds tokens).
    #[serde(skip)]
    pub acl: crate::acl::AclConfig,
    pub log_level: String,
    pub log_json: bool,
    pub ui_enabled: bool,
    /// `ui_config.dir`: the UI's files from disk instead of the built-in copy.
    pub ui_dir: Option<std::path::PathBuf>,
    /// `ui_config.content_path` (default `/ui/`), always with a leading and trailing slash.
    pub ui_content_path: String,
    pub telemetry: Telemetry,
    /// Pretty-print every HTTP response (Consul does in dev mode).
    pub always_pretty: bool,
    /// Script checks registered over the HTTP API (`enable_script_checks`).
    pub enable_script_checks: bool,
    /// Script checks defined in config files: `enable_local_script_checks` or
    /// `enable_script_checks`. The local flag alone keeps the API from running scripts.
    pub enable_local_script_checks: bool,
    #[serde(serialize_with = "serialize_duration")]
    pub ae_interval: Duration,
    #[serde(serialize_with = "serialize_duration")]
    pub check_update_interval: Duration,
    pub connect_enabled: bool,
    /// The built-in CA's configuration the leader bootstraps with.
    #[serde(serialize_with = "serialize_ca_config")]
    pub ca_config: crate::types::connect::CaConfig,
    /// `allow`/`deny` when no intention matches; `None` falls back to the ACL default.
    pub default_intention_policy: Option<String>,
    /// `config_entries.bootstrap`, normalised to PascalCase.
    pub config_entries_bootstrap: Vec<Value>,
    /// Services and checks from config files, registered with the agent at start.
    #[serde(skip)]
    pub services: Vec<ServiceDefinition>,
    #[serde(skip)]
    pub checks: Vec<CheckDefinition>,
}

fn serialize_ca_config<S: serde::Serializer>(
    config: &crate::types::connect::CaConfig,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serde::Serialize::serialize(&crate::api::ca_config::config(config), serializer)
}

/// The `autopilot` stanza over Consul's defaults.
fn autopilot_config(
    raw: raw::RawAutopilot,
) -> Result<crate::types::operator::AutopilotConfig, String> {
    let defaults = crate::types::operator::AutopilotConfig::default();
    Ok(crate::types::operator::AutopilotConfig {
        cleanup_dead_servers: raw
            .cleanup_dead_servers
            .unwrap_or(defaults.cleanup_dead_servers),
        last_contact_threshold: duration(
            "autopilot.last_contact_threshold",
            raw.last_contact_threshold.as_deref(),
            defaults.last_contact_threshold,
        )?,
        max_trailing_logs: raw.max_trailing_logs.unwrap_or(defaults.max_trailing_logs),
        min_quorum: raw.min_quorum.unwrap_or(defaults.min_quorum),
        server_stabilization_time: duration(
            "autopilot.server_stabilization_time",
            raw.server_stabilization_time.as_deref(),
            defaults.server_stabilization_time,
        )?,
        redundancy_zone_tag: raw.redundancy_zone_tag.unwrap_or_default(),
        disable_upgrade_migration: raw.disable_upgrade_migration.unwrap_or_default(),
        upgrade_version_tag: raw.upgrade_version_tag.unwrap_or_default(),
        indexes: Default::default(),
    })
}

/// The `acl` stanza over Consul's defaults (disabled, default policy allow).
fn acl_config(raw: raw::RawAcl) -> Result<crate::acl::AclConfig, String> {
    let default_policy = match raw.default_policy.as_deref().unwrap_or("allow") {
        "allow" => crate::acl::DefaultPolicy::Allow,
        "deny" => crate::acl::DefaultPolicy::Deny,
        other => {
            return Err(format!(
                "acl.default_policy: {other:?} must be \"allow\" or \"deny\""
            ))
        }
    };
    let down_policy = raw.down_policy.unwrap_or_else(|| "extend-cache".into());
    if !["allow", "deny", "extend-cache", "async-cache"].contains(&down_policy.as_str()) {
        return Err(format!(
            "acl.down_policy: {down_policy:?} must be one of allow, deny, extend-cache, async-cache"
        ));
    }
    for (name, value) in [
        ("acl.token_ttl", &raw.token_ttl),
        ("acl.policy_ttl", &raw.policy_ttl),
        ("acl.role_ttl", &raw.role_ttl),
    ] {
        duration(name, value.as_deref(), Duration::from_secs(30))?;
    }
    let tokens = raw.tokens.unwrap_or_default();
    let nonempty = |value: Option<String>| value.filter(|value| !value.is_empty());
    Ok(crate::acl::AclConfig {
        enabled: raw.enabled.unwrap_or(false),
        default_policy,
        down_policy,
        enable_key_list_policy: raw.enable_key_list_policy.unwrap_or(false),
        enable_token_persistence: raw.enable_token_persistence.unwrap_or(false),
        enable_token_replication: raw.enable_token_replication.unwrap_or(false),
        initial_management: nonempty(tokens.initial_management.or(tokens.master)),
        tokens: crate::acl::AgentTokens {
            agent: nonempty(tokens.agent),
            default: nonempty(tokens.default),
            dns: nonempty(tokens.dns),
            agent_recovery: nonempty(tokens.agent_recovery.or(tokens.agent_master)),
            replication: nonempty(tokens.replication),
            config_file_service_registration: nonempty(tokens.config_file_service_registration),
        },
    })
}

/// `ui_config.content_path` with the slashes Consul adds: `ui` and `/ui` both mean `/ui/`.
fn content_path(given: Option<&str>) -> String {
    let trimmed = given.unwrap_or("/ui/").trim_matches('/');
    if trimmed.is_empty() {
        "/".into()
    } else {
        format!("/{trimmed}/")
    }
}

/// As the API shows it, without the Raft indexes a stanza has none of.
fn serialize_autopilot<S: serde::Serializer>(
    config: &crate::types::operator::AutopilotConfig,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let mut json = crate::api::operator::config(config);
    if let Some(fields) = json.as_object_mut() {
        fields.remove("CreateIndex");
        fields.remove("ModifyIndex");
    }
    serde::Serialize::serialize(&json, serializer)
}

fn serialize_duration<S: serde::Serializer>(
    duration: &Duration,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&crate::types::duration::format_go_duration(*duration))
}

/// Consul's `-dev` source: one in-memory server on loopback with fast Raft timing.
fn dev_defaults() -> Value {
    json!({
        "dev_mode": true,
        "server": true,
        "bootstrap": true,
        "bind_addr": "127.0.0.1",
        "client_addr": "127.0.0.1",
        "ports": {"grpc": 8502},
        "performance": {"raft_multiplier": 1},
        "log_level": "debug",
        "ui_config": {"enabled": true},
        "enable_debug": true,
    })
}

/// Config keys holding service and check definitions.
const DEFINITION_KEYS: [&str; 4] = ["service", "services", "check", "checks"];

/// Why the configuration could not be loaded: a source that cannot be read or parsed, a value
/// of the wrong type, or an invalid setting or definition. The message names the source (file,
/// fragment or flags) and the key. Callers only report it (the agent refuses to start, a
/// reload fails), so it is one kind.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl ConfigError {
    fn new(message: impl Into<String>) -> ConfigError {
        ConfigError(message.into())
    }
}

/// A loaded configuration and the warnings to log once logging is up.
pub struct Loaded {
    pub config: RuntimeConfig,
    pub warnings: Vec<String>,
}

/// Loads, merges and validates every source.
pub fn load(options: &LoadOptions) -> Result<Loaded, ConfigError> {
    let forced = options.format.as_deref().map(Format::parse).transpose()?;
    let mut sources = Vec::new();
    if options.dev {
        sources.push(Source {
            name: "dev defaults".into(),
            value: dev_defaults(),
        });
    }
    for path in &options.paths {
        match path {
            ConfigPath::File(file) => sources.push(sources::read_file(file, forced)?),
            ConfigPath::Dir(dir) => {
                for file in sources::dir_files(dir, forced)? {
                    sources.push(sources::read_file(&file, forced)?);
                }
            }
        }
    }
    for (position, fragment) in options.hcl_fragments.iter().enumerate() {
        let name = format!("-hcl fragment {}", position + 1);
        sources.push(sources::parse_text(&name, fragment, Format::Hcl)?);
    }
    if options
        .flags
        .as_object()
        .is_some_and(|flags| !flags.is_empty())
    {
        sources.push(Source {
            name: "command-line flags".into(),
            value: options.flags.clone(),
        });
    }

    // Check each source on its own first, so warnings and type errors name their source.
    // Service and check definitions are taken out before merging: Consul appends them across
    // sources rather than merging them.
    let mut warnings = Vec::new();
    let mut merged = json!({});
    let mut definitions: Vec<(String, &'static str, Value)> = Vec::new();
    for mut source in sources {
        if let Some(object) = source.value.as_object_mut() {
            for key in DEFINITION_KEYS {
                if let Some(value) = object.remove(key) {
                    definitions.push((source.name.clone(), key, value));
                }
            }
        }
        let mut unknown = Vec::new();
        serde_ignored::deserialize::<_, _, RawConfig>(&source.value, |path| {
            unknown.push(path.to_string())
        })
        .map_err(|error| ConfigError::new(format!("{}: {error}", source.name)))?;
        warnings.extend(
            unknown
                .into_iter()
                .map(|key| format!("{}: unknown config key {key:?} ignored", source.name)),
        );
        sources::merge(&mut merged, source.value);
    }
    let raw: RawConfig =
        serde_json::from_value(merged).map_err(|error| ConfigError::new(error.to_string()))?;
    let mut config = build(raw).map_err(ConfigError::new)?;
    let policy = DefinitionPolicy {
        enable_script_checks: config.enable_local_script_checks,
        remote: false,
    };
    for (source, key, value) in definitions {
        for (position, item) in definition::one_or_many(value).into_iter().enumerate() {
            let located = |error: DecodeError| {
                ConfigError::new(format!("{source}: {key}[{position}]: {error}"))
            };
            match key {
                "service" | "services" => config
                    .services
                    .push(definition::service(item, policy).map_err(located)?),
                _ => config
                    .checks
                    .push(definition::check(item, policy).map_err(located)?),
            }
        }
    }
    if config.advertise_addr.is_unspecified() {
        warnings.push(
            "bind_addr is unspecified and no advertise_addr is set; advertising 127.0.0.1"
                .to_string(),
        );
        config.advertise_addr = IpAddr::from([127, 0, 0, 1]);
    }
    Ok(Loaded { config, warnings })
}

fn parse_ip(key: &str, text: &str) -> Result<IpAddr, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("{key}: {text:?} is not an IP address"))
}

/// A port value: -1 disables the listener, 0..=65535 is a port.
fn port(key: &str, value: Option<i32>, default: i32) -> Result<Option<u16>, String> {
    match value.unwrap_or(default) {
        -1 => Ok(None),
        port => u16::try_from(port)
            .map(Some)
            .map_err(|_| format!("ports.{key}: {port} is not a valid port (use -1 to disable)")),
    }
}

fn duration(key: &str, value: Option<&str>, default: Duration) -> Result<Duration, String> {
    value.map_or(Ok(default), |text| {
        parse_go_duration(text).map_err(|error| format!("{key}: {error}"))
    })
}

fn membership(raw: &RawConfig, dev_mode: bool, server: bool) -> Result<Membership, String> {
    let reconnect_timeout = duration(
        "reconnect_timeout",
        raw.reconnect_timeout.as_deref(),
        Duration::from_secs(72 * 3600),
    )?;
    if reconnect_timeout < Duration::from_secs(8 * 3600) {
        return Err("reconnect_timeout: must be at least 8h".into());
    }
    let base = if dev_mode {
        GossipTimings::LOCAL
    } else {
        GossipTimings::LAN
    };
    let gossip = raw.gossip_lan.clone().unwrap_or_default();
    let count = |key: &str, value: Option<u32>, default: u32| match value {
        Some(0) => Err(format!("gossip_lan.{key}: must be greater than zero")),
        Some(value) => Ok(value),
        None => Ok(default),
    };
    let positive = |key: &str, value: Option<&str>, default: Duration| {
        let value = duration(&format!("gossip_lan.{key}"), value, default)?;
        match value.is_zero() {
            true => Err(format!("gossip_lan.{key}: must be greater than zero")),
            false => Ok(value),
        }
    };
    let gossip_lan = GossipTimings {
        probe_interval: positive(
            "probe_interval",
            gossip.probe_interval.as_deref(),
            base.probe_interval,
        )?,
        probe_timeout: positive(
            "probe_timeout",
            gossip.probe_timeout.as_deref(),
            base.probe_timeout,
        )?,
        suspicion_mult: count("suspicion_mult", gossip.suspicion_mult, base.suspicion_mult)?,
        gossip_interval: positive(
            "gossip_interval",
            gossip.gossip_interval.as_deref(),
            base.gossip_interval,
        )?,
        gossip_nodes: count("gossip_nodes", gossip.gossip_nodes, base.gossip_nodes)?,
        retransmit_mult: count(
            "retransmit_mult",
            gossip.retransmit_mult,
            base.retransmit_mult,
        )?,
        push_pull_interval: base.push_pull_interval,
        reconnect_timeout,
        tombstone_timeout: base.tombstone_timeout,
        reconnect_interval: base.reconnect_interval,
    };
    if gossip_lan.probe_timeout >= gossip_lan.probe_interval {
        return Err("gossip_lan.probe_timeout: must be less than probe_interval".into());
    }
    Ok(Membership {
        lan: Joins {
            start_join: raw.start_join.clone().unwrap_or_default(),
            retry_join: raw.retry_join.clone().unwrap_or_default(),
            retry_interval: duration(
                "retry_interval",
                raw.retry_interval.as_deref(),
                Duration::from_secs(30),
            )?,
            retry_max: raw.retry_max.unwrap_or(0),
        },
        wan: Joins {
            start_join: raw.start_join_wan.clone().unwrap_or_default(),
            retry_join: raw.retry_join_wan.clone().unwrap_or_default(),
            retry_interval: duration(
                "retry_interval_wan",
                raw.retry_interval_wan.as_deref(),
                Duration::from_secs(30),
            )?,
            retry_max: raw.retry_max_wan.unwrap_or(0),
        },
        leave_on_terminate: raw.leave_on_terminate.unwrap_or(!server),
        skip_leave_on_interrupt: raw.skip_leave_on_interrupt.unwrap_or(server),
        gossip_lan,
        // Checked when the keyring is loaded (`gossip::keyring`), which names the key.
        encrypt: raw.encrypt.clone().filter(|key| !key.is_empty()),
        encrypt_verify_incoming: raw.encrypt_verify_incoming.unwrap_or(true),
        encrypt_verify_outgoing: raw.encrypt_verify_outgoing.unwrap_or(true),
        sync_coordinate_interval: match duration(
            "sync_coordinate_interval_min",
            raw.sync_coordinate_interval_min.as_deref(),
            Duration::from_secs(15),
        )? {
            zero if zero.is_zero() => {
                return Err("sync_coordinate_interval_min: must be greater than zero".into())
            }
            interval => interval,
        },
    })
}

fn size(key: &str, value: Option<u64>, default: usize) -> Result<usize, String> {
    match value {
        None => Ok(default),
        Some(0) => Err(format!("{key}: must be greater than zero")),
        Some(value) => usize::try_from(value).map_err(|_| format!("{key}: {value} is too large")),
    }
}

fn valid_datacenter(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

fn default_node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "concord".to_string())
}

fn build(raw: RawConfig) -> Result<RuntimeConfig, String> {
    // The DNS block reads several top-level keys; it gets its own copy before fields move.
    let dns_source = raw.clone();
    let dev_mode = raw.dev_mode.unwrap_or(false);
    let membership = membership(&raw, dev_mode, raw.server.unwrap_or(false))?;
    let watches = raw
        .watches
        .iter()
        .flatten()
        .enumerate()
        .map(|(index, value)| watches::parse(index, value))
        .collect::<Result<Vec<_>, String>>()?;
    let datacenter = raw.datacenter.unwrap_or_else(|| "dc1".into());
    if !valid_datacenter(&datacenter) {
        return Err(format!(
            "datacenter: {datacenter:?} must be lowercase letters, digits, '-' or '_'"
        ));
    }
    let data_dir = raw.data_dir.map(PathBuf::from);
    if data_dir.is_none() && !dev_mode {
        return Err("data_dir: required unless -dev is set (use -data-dir)".into());
    }
    let bootstrap_expect = match (raw.bootstrap.unwrap_or(false), raw.bootstrap_expect) {
        (true, Some(expect)) if expect > 1 => {
            return Err("bootstrap and bootstrap_expect cannot both be set".into())
        }
        (true, _) => 1,
        (false, expect) => expect.unwrap_or(0),
    };
    let server_mode = raw.server.unwrap_or(false);
    if bootstrap_expect > 0 && !server_mode {
        return Err("bootstrap_expect: only a server can bootstrap (set -server)".into());
    }
    let bind_addr = parse_ip("bind_addr", raw.bind_addr.as_deref().unwrap_or("0.0.0.0"))?;
    let advertise_addr = match raw.advertise_addr.as_deref() {
        Some(text) => parse_ip("advertise_addr", text)?,
        None => bind_addr,
    };
    let client_addrs = raw
        .client_addr
        .as_deref()
        .unwrap_or("127.0.0.1")
        .split_whitespace()
        .map(|text| parse_ip("client_addr", text))
        .collect::<Result<Vec<_>, _>>()?;
    if client_addrs.is_empty() {
        return Err("client_addr: at least one address is required".into());
    }
    let dns = dns_config::build(&dns_source, &client_addrs)?;
    let tls = tls_config::build(&dns_source, raw.server.unwrap_or(false))?;
    let raw_ports = raw.ports.unwrap_or_default();
    let grpc_tls_default = match tls.grpc.has_certificate() {
        true => 8503,
        false => -1,
    };
    let ports = Ports {
        http: port("http", raw_ports.http, 8500)?,
        dns: port("dns", raw_ports.dns, 8600)?,
        grpc: port("grpc", raw_ports.grpc, -1)?,
        https: port("https", raw_ports.https, -1)?,
        grpc_tls: port("grpc_tls", raw_ports.grpc_tls, grpc_tls_default)?,
        serf_lan: port("serf_lan", raw_ports.serf_lan, 8301)?,
        serf_wan: port("serf_wan", raw_ports.serf_wan, 8302)?,
        server: port("server", raw_ports.server, 8300)?,
        sidecar_min_port: port("sidecar_min_port", raw_ports.sidecar_min_port, 21000)?,
        sidecar_max_port: port("sidecar_max_port", raw_ports.sidecar_max_port, 21255)?,
    };
    if ports.grpc.is_some() && ports.grpc_tls.is_none() && tls.grpc.has_certificate() {
        return Err(
            "the `ports.grpc` listener no longer supports TLS. Use `ports.grpc_tls` instead. \
                    See the Consul 1.14 upgrade notes"
                .into(),
        );
    }
    if let (Some(min), Some(max)) = (ports.sidecar_min_port, ports.sidecar_max_port) {
        if min > max {
            return Err(format!(
                "ports.sidecar_min_port ({min}) must not exceed ports.sidecar_max_port ({max})"
            ));
        }
    }
    let raw_connect = raw.connect.unwrap_or_default();
    if let Some(provider) = raw_connect.ca_provider.as_deref() {
        if provider != "consul" {
            return Err(format!(
                "connect.ca_provider: {provider:?} is not supported; concord has the built-in \"consul\" provider"
            ));
        }
    }
    let ca_config = crate::connect::ca_config::apply(
        &crate::types::connect::CaConfig::default(),
        &raw_connect.ca_config.unwrap_or_default(),
    )
    .map_err(|error| format!("connect.ca_config: {error}"))?;
    let default_intention_policy = match raw.default_intention_policy.as_deref() {
        None | Some("") => None,
        Some(policy @ ("allow" | "deny")) => Some(policy.to_string()),
        Some(other) => {
            return Err(format!(
                "default_intention_policy: {other:?} must be \"allow\" or \"deny\""
            ))
        }
    };
    let config_entries_bootstrap = raw
        .config_entries
        .and_then(|entries| entries.bootstrap)
        .map(definition::one_or_many)
        .unwrap_or_default()
        .into_iter()
        .map(crate::api::config_entry::normalize)
        .collect::<Vec<Value>>();
    for (position, entry) in config_entries_bootstrap.iter().enumerate() {
        let map = entry.as_object().cloned().unwrap_or_default();
        crate::connect::entry::decode(map)
            .map_err(|error| format!("config_entries.bootstrap[{position}]: {error}"))?;
    }
    let raw_limits = raw.limits.unwrap_or_default();
    let limits = Limits {
        kv_max_value_size: size(
            "limits.kv_max_value_size",
            raw_limits.kv_max_value_size,
            512 * 1024,
        )?,
        txn_max_req_len: size(
            "limits.txn_max_req_len",
            raw_limits.txn_max_req_len,
            512 * 1024,
        )?,
        txn_max_ops: 128,
        http_max_body_size: size(
            "limits.http_max_body_size",
            raw_limits.http_max_body_size,
            4 * 1024 * 1024,
        )?,
        snapshot_max_size: size(
            "limits.snapshot_max_size",
            raw_limits.snapshot_max_size,
            1024 * 1024 * 1024,
        )?,
        http_body_timeout: duration(
            "limits.http_body_timeout",
            raw_limits.http_body_timeout.as_deref(),
            Duration::from_secs(30),
        )?,
        xds_max_streams: u32::try_from(size(
            "limits.xds_max_streams",
            raw_limits.xds_max_streams,
            2048,
        )?)
        .map_err(|_| "limits.xds_max_streams is too large".to_string())?,
        dns_tcp_idle_timeout: duration(
            "limits.dns_tcp_idle_timeout",
            raw_limits.dns_tcp_idle_timeout.as_deref(),
            Duration::from_secs(10),
        )?,
        dns_max_tcp_connections: size(
            "limits.dns_max_tcp_connections",
            raw_limits.dns_max_tcp_connections,
            512,
        )?,
        connect_leaf_idle_timeout: duration(
            "limits.connect_leaf_idle_timeout",
            raw_limits.connect_leaf_idle_timeout.as_deref(),
            Duration::from_secs(300),
        )?,
    };
    if limits.dns_tcp_idle_timeout.is_zero() {
        return Err("limits.dns_tcp_idle_timeout: must be greater than zero".into());
    }
    let query = QueryLimits {
        default_query_time: duration(
            "default_query_time",
            raw.default_query_time.as_deref(),
            Duration::from_secs(300),
        )?,
        max_query_time: duration(
            "max_query_time",
            raw.max_query_time.as_deref(),
            Duration::from_secs(600),
        )?,
    };
    let multiplier = raw
        .performance
        .and_then(|performance| performance.raft_multiplier)
        .unwrap_or(5);
    if !(1..=10).contains(&multiplier) {
        return Err(format!(
            "performance.raft_multiplier: {multiplier} must be between 1 and 10"
        ));
    }
    let autopilot = autopilot_config(raw.autopilot.unwrap_or_default())?;
    let acl = acl_config(raw.acl.unwrap_or_default())?;
    let log_level = raw
        .log_level
        .unwrap_or_else(|| "info".into())
        .to_ascii_lowercase();
    if !["trace", "debug", "info", "warn", "err", "error"].contains(&log_level.as_str()) {
        return Err(format!(
            "log_level: {log_level:?} must be one of trace, debug, info, warn, error"
        ));
    }
    let locality = raw.locality.map(|locality| crate::types::Locality {
        region: locality.region.unwrap_or_default(),
        zone: locality.zone.unwrap_or_default(),
    });
    if let Some(Err(error)) = locality.as_ref().map(crate::types::Locality::check) {
        return Err(format!("locality is invalid: {error}"));
    }
    Ok(RuntimeConfig {
        tls,
        dev_mode,
        primary_datacenter: raw.primary_datacenter.unwrap_or_else(|| datacenter.clone()),
        datacenter,
        node_name: raw.node_name.unwrap_or_else(default_node_name),
        node_id: raw.node_id,
        node_meta: raw.node_meta.unwrap_or_default(),
        locality,
        data_dir,
        server_mode,
        bootstrap_expect,
        bind_addr,
        advertise_addr,
        client_addrs,
        ports,
        membership,
        watches,
        dns,
        limits,
        query,
        raft: RaftConfig {
            multiplier,
            snapshot_threshold: raw.raft_snapshot_threshold.unwrap_or(16384),
            trailing_logs: raw.raft_trailing_logs.unwrap_or(10240),
        },
        autopilot,
        acl,
        log_level,
        log_json: raw.log_json.unwrap_or(false),
        ui_enabled: raw
            .ui_config
            .as_ref()
            .and_then(|ui| ui.enabled)
            .unwrap_or(dev_mode),
        ui_dir: raw
            .ui_config
            .as_ref()
            .and_then(|ui| ui.dir.clone())
            .filter(|dir| !dir.is_empty())
            .map(std::path::PathBuf::from),
        ui_content_path: content_path(
            raw.ui_config
                .as_ref()
                .and_then(|ui| ui.content_path.as_deref()),
        ),
        telemetry: telemetry(raw.telemetry.unwrap_or_default())?,
        always_pretty: dev_mode,
        enable_script_checks: raw.enable_script_checks.unwrap_or(false),
        enable_local_script_checks: raw.enable_script_checks.unwrap_or(false)
            || raw.enable_local_script_checks.unwrap_or(false),
        ae_interval: duration(
            "ae_interval",
            raw.ae_interval.as_deref(),
            Duration::from_secs(60),
        )?,
        connect_enabled: raw_connect.enabled.unwrap_or(true),
        ca_config,
        default_intention_policy,
        config_entries_bootstrap,
        check_update_interval: duration(
            "check_update_interval",
            raw.check_update_interval.as_deref(),
            Duration::from_secs(300),
        )?,
        services: Vec::new(),
        checks: Vec::new(),
    })
}

#[cfg(test)]
mod tests;
