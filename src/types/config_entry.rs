//! Typed views of the config-entry kinds concord interprets, and the rules each entry must
//! satisfy on its own. Rules that need other entries (a router needs an HTTP protocol) live in
//! `connect::entry`, which sees the state store.
//!
//! Every struct denies unknown fields: Consul refuses `consul config write` of a key it does not
//! know, and a typo silently ignored in traffic policy is worse than a 400. Fields concord only
//! stores and returns are kept as opaque JSON.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value};

pub const SERVICE_DEFAULTS: &str = "service-defaults";
pub const PROXY_DEFAULTS: &str = "proxy-defaults";
pub const SERVICE_ROUTER: &str = "service-router";
pub const SERVICE_SPLITTER: &str = "service-splitter";
pub const SERVICE_RESOLVER: &str = "service-resolver";
pub const SERVICE_INTENTIONS: &str = "service-intentions";
pub const MESH: &str = "mesh";

/// The kinds concord stores, in Consul's spelling.
pub const KINDS: &[&str] = &[
    SERVICE_DEFAULTS,
    PROXY_DEFAULTS,
    SERVICE_ROUTER,
    SERVICE_SPLITTER,
    SERVICE_RESOLVER,
    SERVICE_INTENTIONS,
    MESH,
];

/// Fields every kind carries; they are handled by the envelope, not the typed view.
const ENVELOPE: &[&str] = &[
    "Kind",
    "Name",
    "Meta",
    "Namespace",
    "Partition",
    "CreateIndex",
    "ModifyIndex",
];

type Opaque = Option<Value>;

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct ServiceDefaults {
    #[serde(default)]
    pub protocol: String,
    #[serde(default)]
    pub mode: String,
    pub transparent_proxy: Opaque,
    #[serde(default, rename = "MutualTLSMode")]
    pub mutual_tls_mode: String,
    pub mesh_gateway: Opaque,
    pub expose: Opaque,
    #[serde(rename = "ExternalSNI")]
    pub external_sni: Opaque,
    pub upstream_config: Opaque,
    pub destination: Opaque,
    pub max_inbound_connections: Opaque,
    pub local_connect_timeout_ms: Opaque,
    pub local_request_timeout_ms: Opaque,
    pub balance_inbound_connections: Opaque,
    pub rate_limits: Opaque,
    pub envoy_extensions: Opaque,
    #[serde(rename = "MaxRequestHeadersKB")]
    pub max_request_headers_kb: Opaque,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct ProxyDefaults {
    #[serde(default)]
    pub config: Map<String, Value>,
    #[serde(default)]
    pub mode: String,
    pub transparent_proxy: Opaque,
    #[serde(default, rename = "MutualTLSMode")]
    pub mutual_tls_mode: String,
    pub mesh_gateway: Opaque,
    pub expose: Opaque,
    pub access_logs: Opaque,
    pub envoy_extensions: Opaque,
    pub failover_policy: Opaque,
    pub prioritize_by_locality: Opaque,
}

impl ProxyDefaults {
    /// `Config.protocol`, the mesh-wide default protocol.
    pub fn protocol(&self) -> Option<&str> {
        self.config.get("protocol").and_then(Value::as_str)
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct ServiceRouter {
    #[serde(default)]
    pub routes: Vec<Route>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct Route {
    pub r#match: Option<RouteMatch>,
    pub destination: Option<RouteDestination>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct RouteMatch {
    #[serde(rename = "HTTP")]
    pub http: Option<HttpMatch>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct HttpMatch {
    #[serde(default)]
    pub path_exact: String,
    #[serde(default)]
    pub path_prefix: String,
    #[serde(default)]
    pub path_regex: String,
    #[serde(default)]
    pub case_insensitive: bool,
    #[serde(default)]
    pub header: Vec<HeaderMatch>,
    #[serde(default)]
    pub query_param: Vec<QueryParamMatch>,
    #[serde(default)]
    pub methods: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct HeaderMatch {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub present: bool,
    #[serde(default)]
    pub exact: String,
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub suffix: String,
    #[serde(default)]
    pub contains: String,
    #[serde(default)]
    pub regex: String,
    #[serde(default)]
    pub invert: bool,
    #[serde(default)]
    pub ignore_case: bool,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct QueryParamMatch {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub present: bool,
    #[serde(default)]
    pub exact: String,
    #[serde(default)]
    pub regex: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct RouteDestination {
    #[serde(default)]
    pub service: String,
    #[serde(default)]
    pub service_subset: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub partition: String,
    #[serde(default)]
    pub prefix_rewrite: String,
    pub request_timeout: Opaque,
    pub idle_timeout: Opaque,
    #[serde(default)]
    pub num_retries: u32,
    #[serde(default)]
    pub retry_on_connect_failure: bool,
    #[serde(default)]
    pub retry_on_status_codes: Vec<u32>,
    #[serde(default)]
    pub retry_on: Vec<String>,
    pub request_headers: Opaque,
    pub response_headers: Opaque,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct ServiceSplitter {
    #[serde(default)]
    pub splits: Vec<Split>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct Split {
    #[serde(default)]
    pub weight: f32,
    #[serde(default)]
    pub service: String,
    #[serde(default)]
    pub service_subset: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub partition: String,
    pub request_headers: Opaque,
    pub response_headers: Opaque,
}

impl Split {
    /// The weight in hundredths of a percent, as Consul scales it (0.01% granularity).
    pub fn scaled_weight(&self) -> u32 {
        (self.weight * 100.0).round().max(0.0) as u32
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct ServiceResolver {
    #[serde(default)]
    pub default_subset: String,
    #[serde(default)]
    pub subsets: BTreeMap<String, ResolverSubset>,
    pub redirect: Option<ResolverRedirect>,
    #[serde(default)]
    pub failover: BTreeMap<String, ResolverFailover>,
    /// A Go duration ("5s") or nanoseconds.
    pub connect_timeout: Opaque,
    pub request_timeout: Opaque,
    pub prioritize_by_locality: Opaque,
    pub load_balancer: Opaque,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct ResolverSubset {
    #[serde(default)]
    pub filter: String,
    #[serde(default)]
    pub only_passing: bool,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct ResolverRedirect {
    #[serde(default)]
    pub service: String,
    #[serde(default)]
    pub service_subset: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub partition: String,
    #[serde(default)]
    pub datacenter: String,
    #[serde(default)]
    pub peer: String,
    #[serde(default)]
    pub sameness_group: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct ResolverFailover {
    #[serde(default)]
    pub service: String,
    #[serde(default)]
    pub service_subset: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub datacenters: Vec<String>,
    #[serde(default)]
    pub targets: Vec<FailoverTarget>,
    pub policy: Opaque,
    #[serde(default)]
    pub sameness_group: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct FailoverTarget {
    #[serde(default)]
    pub service: String,
    #[serde(default)]
    pub service_subset: String,
    #[serde(default)]
    pub partition: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub datacenter: String,
    #[serde(default)]
    pub peer: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct ServiceIntentions {
    #[serde(default)]
    pub sources: Vec<SourceIntention>,
    #[serde(rename = "JWT")]
    pub jwt: Opaque,
    /// Positions in `sources` by local source name, built once at parse so that deciding
    /// one (source, destination) pair does not scan thousands of sources.
    #[serde(skip)]
    pub by_name: std::collections::HashMap<String, usize>,
}

impl ServiceIntentions {
    /// The intention for a local source named exactly `name` (`*` for the wildcard source).
    pub fn source(&self, name: &str) -> Option<&SourceIntention> {
        self.by_name.get(name).map(|&i| &self.sources[i])
    }
}

impl SourceIntention {
    /// Whether the intention carries L7 permissions (and so has no Action of its own).
    pub fn is_l7(&self) -> bool {
        self.permissions.as_ref().is_some_and(|p| !p.is_empty())
    }
}

/// Consul's intention precedence for a source and destination name (Community Edition:
/// namespaces are always exact): exact->exact 9, *->exact 8, exact->* 6, *->* 5.
pub fn precedence(source: &str, destination: &str) -> u32 {
    let base = if destination == "*" { 6 } else { 9 };
    if source == "*" {
        base - 1
    } else {
        base
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct SourceIntention {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub peer: String,
    #[serde(default)]
    pub partition: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub sameness_group: String,
    #[serde(default)]
    pub action: String,
    pub permissions: Option<Vec<Permission>>,
    /// Computed by the server; ignored on input.
    pub precedence: Opaque,
    #[serde(default)]
    pub r#type: String,
    #[serde(default)]
    pub description: String,
    #[serde(default, rename = "LegacyID")]
    pub legacy_id: String,
    #[serde(default)]
    pub legacy_meta: BTreeMap<String, String>,
    #[serde(default)]
    pub legacy_create_time: String,
    #[serde(default)]
    pub legacy_update_time: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct Permission {
    #[serde(default)]
    pub action: String,
    #[serde(rename = "HTTP")]
    pub http: Option<PermissionHttp>,
    #[serde(rename = "JWT")]
    pub jwt: Opaque,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct PermissionHttp {
    #[serde(default)]
    pub path_exact: String,
    #[serde(default)]
    pub path_prefix: String,
    #[serde(default)]
    pub path_regex: String,
    #[serde(default)]
    pub header: Vec<HeaderMatch>,
    #[serde(default)]
    pub methods: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct Mesh {
    pub transparent_proxy: Opaque,
    #[serde(rename = "AllowEnablingPermissiveMutualTLS")]
    pub allow_enabling_permissive_mutual_tls: Opaque,
    pub validate_clusters: Opaque,
    #[serde(rename = "TLS")]
    pub tls: Opaque,
    #[serde(rename = "HTTP")]
    pub http: Opaque,
    pub peering: Opaque,
}

/// The typed view of one stored entry. One exists per stored entry, behind an `Arc`, so the
/// size of its largest variant costs nothing worth boxing for.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Typed {
    ServiceDefaults(ServiceDefaults),
    ProxyDefaults(ProxyDefaults),
    Router(ServiceRouter),
    Splitter(ServiceSplitter),
    Resolver(ServiceResolver),
    Intentions(ServiceIntentions),
    Mesh(Mesh),
}

impl Typed {
    /// An empty view of `kind`, for an entry this version cannot parse.
    pub fn unknown(kind: &str) -> Typed {
        match kind {
            SERVICE_DEFAULTS => Typed::ServiceDefaults(ServiceDefaults::default()),
            PROXY_DEFAULTS => Typed::ProxyDefaults(ProxyDefaults::default()),
            SERVICE_ROUTER => Typed::Router(ServiceRouter::default()),
            SERVICE_SPLITTER => Typed::Splitter(ServiceSplitter::default()),
            SERVICE_RESOLVER => Typed::Resolver(ServiceResolver::default()),
            SERVICE_INTENTIONS => Typed::Intentions(ServiceIntentions::default()),
            _ => Typed::Mesh(Mesh::default()),
        }
    }
}

/// The body of an entry without its envelope fields.
fn body(json: &Map<String, Value>) -> Value {
    Value::Object(
        json.iter()
            .filter(|(key, _)| !ENVELOPE.contains(&key.as_str()))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect(),
    )
}

/// Why an entry's JSON is not an entry of its kind; the message is the one a 400 carries.
/// Callers only report it (connect::entry wraps it as its own error), so it is one kind.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(String);

fn decode<T: serde::de::DeserializeOwned>(kind: &str, body: Value) -> Result<T, ParseError> {
    serde_json::from_value(body)
        .map_err(|error| ParseError(format!("Invalid {kind} config entry: {error}")))
}

/// Parses the canonical JSON object of an entry of `kind` into its typed view.
pub fn parse(kind: &str, json: &Map<String, Value>) -> Result<Typed, ParseError> {
    let body = body(json);
    Ok(match kind {
        SERVICE_DEFAULTS => Typed::ServiceDefaults(decode(kind, body)?),
        PROXY_DEFAULTS => Typed::ProxyDefaults(decode(kind, body)?),
        SERVICE_ROUTER => Typed::Router(decode(kind, body)?),
        SERVICE_SPLITTER => Typed::Splitter(decode(kind, body)?),
        SERVICE_RESOLVER => Typed::Resolver(decode(kind, body)?),
        SERVICE_INTENTIONS => {
            let mut intentions: ServiceIntentions = decode(kind, body)?;
            intentions.by_name = intentions
                .sources
                .iter()
                .enumerate()
                .filter(|(_, source)| source.peer.is_empty())
                .map(|(i, source)| (source.name.clone(), i))
                .collect();
            Typed::Intentions(intentions)
        }
        MESH => Typed::Mesh(decode(kind, body)?),
        other => return Err(ParseError(format!("invalid config entry kind: {other}"))),
    })
}

/// Parses a stored entry's JSON text.
pub fn parse_stored(kind: &str, json: &str) -> Result<Typed, ParseError> {
    match serde_json::from_str::<Value>(json) {
        Ok(Value::Object(map)) => parse(kind, &map),
        _ => Err(ParseError(
            "stored config entry is not a JSON object".into(),
        )),
    }
}
