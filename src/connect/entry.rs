//! Config-entry validation, as Consul does it: first the rules an entry must satisfy on its
//! own, then the rules that depend on other entries (a router or splitter needs its service to
//! speak an HTTP-family protocol; a chain must compile). Every message names the field and the
//! rule, and nothing is stored when one fails.

use serde_json::{Map, Value};

use crate::filter::Filter;
use crate::state::Tables;
use crate::types::config_entry::{self as ce, HeaderMatch, Typed};
use crate::types::connect::ConfigEntry;
use crate::types::duration::parse_go_duration;

/// Most `Meta` pairs an entry may carry (Consul's limit).
const MAX_META: usize = 64;

const PROTOCOLS: &[&str] = &["tcp", "http", "http2", "grpc"];

pub fn is_http_family(protocol: &str) -> bool {
    matches!(protocol, "http" | "http2" | "grpc")
}

/// Why a config entry, or a change to one, was refused: its decoding (no or an unknown kind, a
/// field of the wrong type), or a rule it breaks on its own (here) or across entries (`graph`).
/// The message is Consul's and names the field. Consul's HTTP edge tells the two apart (a
/// body it cannot decode is the client's 400, a failed validation its RPC's 500), so this
/// carries which one it is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct EntryError {
    message: String,
    decoding: bool,
}

impl EntryError {
    /// A rule the entry breaks.
    pub(super) fn new(message: impl Into<String>) -> EntryError {
        EntryError {
            message: message.into(),
            decoding: false,
        }
    }

    /// A body that is not a config entry at all.
    pub(super) fn decoding(message: impl Into<String>) -> EntryError {
        EntryError {
            message: message.into(),
            decoding: true,
        }
    }

    /// Whether the entry could not be decoded (rather than broke a rule).
    pub fn is_decoding(&self) -> bool {
        self.decoding
    }
}

impl From<ce::ParseError> for EntryError {
    fn from(error: ce::ParseError) -> EntryError {
        EntryError::decoding(error.to_string())
    }
}

/// Decodes and validates a canonical (PascalCase) entry object into what is stored.
pub fn decode(json: Map<String, Value>) -> Result<ConfigEntry, EntryError> {
    let kind = json
        .get("Kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let name = json
        .get("Name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if kind.is_empty() {
        return Err(EntryError::decoding("Kind is required"));
    }
    if !ce::KINDS.contains(&kind.as_str()) {
        return Err(EntryError::decoding(format!(
            "invalid config entry kind: {kind:?} (concord stores {})",
            ce::KINDS.join(", ")
        )));
    }
    if name.is_empty() {
        return Err(EntryError::new("Name is required"));
    }
    match kind.as_str() {
        ce::PROXY_DEFAULTS if name != "global" => {
            return Err(EntryError::new(format!(
                "invalid name ({name:?}), only \"global\" is supported"
            )))
        }
        ce::MESH if name != "mesh" => {
            return Err(EntryError::new(format!(
                "invalid name ({name:?}), only \"mesh\" is supported"
            )))
        }
        _ => {}
    }
    match json.get("Meta") {
        None | Some(Value::Null) => {}
        Some(Value::Object(meta)) => {
            if meta.len() > MAX_META {
                return Err(EntryError::new(format!(
                    "Meta exceeds the limit of {MAX_META} pairs"
                )));
            }
            if meta.values().any(|value| !value.is_string()) {
                return Err(EntryError::new("Meta values must be strings"));
            }
        }
        Some(_) => return Err(EntryError::new("Meta must be a map of strings")),
    }
    let typed = ce::parse(&kind, &json)?;
    validate(&name, &typed)?;
    let mut stored = json;
    stored.remove("CreateIndex");
    stored.remove("ModifyIndex");
    if let Some(Value::Array(sources)) = stored.get_mut("Sources") {
        // Precedence is the server's to compute; it is added when the entry is read.
        for source in sources.iter_mut().filter_map(Value::as_object_mut) {
            source.remove("Precedence");
        }
    }
    let text = Value::Object(stored).to_string();
    Ok(ConfigEntry::new(kind, name, text))
}

fn validate(name: &str, typed: &Typed) -> Result<(), EntryError> {
    match typed {
        Typed::ServiceDefaults(entry) => {
            protocol(&entry.protocol, "Protocol")?;
            one_of("Mode", &entry.mode, &["", "direct", "transparent"])?;
            one_of(
                "MutualTLSMode",
                &entry.mutual_tls_mode,
                &["", "strict", "permissive"],
            )
        }
        Typed::ProxyDefaults(entry) => {
            if let Some(value) = entry.config.get("protocol") {
                let text = value
                    .as_str()
                    .ok_or_else(|| EntryError::new("Config.protocol must be a string"))?;
                protocol(text, "Config.protocol")?;
            }
            one_of("Mode", &entry.mode, &["", "direct", "transparent"])?;
            one_of(
                "MutualTLSMode",
                &entry.mutual_tls_mode,
                &["", "strict", "permissive"],
            )
        }
        Typed::Router(router) => {
            for (i, route) in router.routes.iter().enumerate() {
                let http = route.r#match.as_ref().and_then(|m| m.http.as_ref());
                if let Some(http) = http {
                    let field = format!("Routes[{i}].Match.HTTP");
                    paths(
                        &field,
                        &http.path_exact,
                        &http.path_prefix,
                        &http.path_regex,
                    )?;
                    for (j, header) in http.header.iter().enumerate() {
                        header_match(&format!("{field}.Header[{j}]"), header)?;
                    }
                    for (j, param) in http.query_param.iter().enumerate() {
                        let field = format!("{field}.QueryParam[{j}]");
                        if param.name.is_empty() {
                            return Err(EntryError::new(format!(
                                "{field}: missing required Name field"
                            )));
                        }
                        let set = [
                            param.present,
                            !param.exact.is_empty(),
                            !param.regex.is_empty(),
                        ];
                        if set.iter().filter(|set| **set).count() > 1 {
                            return Err(EntryError::new(format!(
                                "{field} should only contain one of Present, Exact, or Regex"
                            )));
                        }
                        regex(&field, &param.regex)?;
                    }
                    methods(&field, &http.methods)?;
                }
                if let Some(destination) = &route.destination {
                    let exact_or_prefix = http.is_some_and(|http| {
                        !http.path_exact.is_empty() || !http.path_prefix.is_empty()
                    });
                    if !destination.prefix_rewrite.is_empty() && !exact_or_prefix {
                        return Err(EntryError::new(format!(
                            "Routes[{i}].Destination.PrefixRewrite needs the route to match on PathExact or PathPrefix"
                        )));
                    }
                    for retry in &destination.retry_on {
                        one_of(
                            &format!("Routes[{i}].Destination.RetryOn"),
                            retry,
                            &[
                                "5xx",
                                "gateway-error",
                                "reset",
                                "connect-failure",
                                "envoy-ratelimited",
                                "retriable-4xx",
                                "refused-stream",
                                "cancelled",
                                "deadline-exceeded",
                                "internal",
                                "resource-exhausted",
                                "unavailable",
                            ],
                        )?;
                    }
                }
            }
            Ok(())
        }
        Typed::Splitter(splitter) => {
            if splitter.splits.is_empty() {
                return Err(EntryError::new("Splits: no splits configured"));
            }
            let mut total = 0;
            let mut seen = Vec::new();
            for (i, split) in splitter.splits.iter().enumerate() {
                if !(0.0..=100.0).contains(&split.weight) {
                    return Err(EntryError::new(format!(
                        "Splits[{i}].Weight must be between 0 and 100"
                    )));
                }
                total += split.scaled_weight();
                let service = if split.service.is_empty() {
                    name
                } else {
                    &split.service
                };
                let destination = (service.to_string(), split.service_subset.clone());
                if seen.contains(&destination) {
                    return Err(EntryError::new(format!(
                        "Splits[{i}]: split destination occurs more than once: service={:?}, subset={:?}, namespace=\"\", partition=\"\"",
                        destination.0, destination.1
                    )));
                }
                seen.push(destination);
            }
            if total != 10_000 {
                return Err(EntryError::new(format!(
                    "Splits: the sum of all split weights must be 100, not {:.6}",
                    f64::from(total) / 100.0
                )));
            }
            Ok(())
        }
        Typed::Resolver(resolver) => validate_resolver(name, resolver),
        Typed::Intentions(intentions) => {
            let mut names = Vec::new();
            for (i, source) in intentions.sources.iter().enumerate() {
                let field = format!("Sources[{i}]");
                if source.name.is_empty() {
                    return Err(EntryError::new(format!("{field}.Name is required")));
                }
                let key = (source.peer.as_str(), source.name.as_str());
                if names.contains(&key) {
                    return Err(EntryError::new(format!(
                        "{field}: source {:?} is defined more than once",
                        source.name
                    )));
                }
                names.push(key);
                one_of(&format!("{field}.Type"), &source.r#type, &["", "consul"])?;
                match &source.permissions {
                    Some(permissions) if !permissions.is_empty() => {
                        if !source.action.is_empty() {
                            return Err(EntryError::new(format!(
                                "{field}.Action must be omitted if Permissions are specified"
                            )));
                        }
                        for (j, permission) in permissions.iter().enumerate() {
                            let field = format!("{field}.Permissions[{j}]");
                            if !matches!(permission.action.as_str(), "allow" | "deny") {
                                return Err(EntryError::new(format!(
                                    "{field}.Action must be set to 'allow' or 'deny'"
                                )));
                            }
                            let Some(http) = &permission.http else {
                                if permission.jwt.is_some() {
                                    continue;
                                }
                                return Err(EntryError::new(format!("{field}.HTTP is required")));
                            };
                            let field = format!("{field}.HTTP");
                            if http.path_exact.is_empty()
                                && http.path_prefix.is_empty()
                                && http.path_regex.is_empty()
                                && http.header.is_empty()
                                && http.methods.is_empty()
                            {
                                return Err(EntryError::new(format!(
                                    "{field} should not be empty"
                                )));
                            }
                            paths(
                                &field,
                                &http.path_exact,
                                &http.path_prefix,
                                &http.path_regex,
                            )?;
                            for (k, header) in http.header.iter().enumerate() {
                                header_match(&format!("{field}.Header[{k}]"), header)?;
                            }
                            methods(&field, &http.methods)?;
                        }
                    }
                    _ => {
                        if !matches!(source.action.as_str(), "allow" | "deny") {
                            return Err(EntryError::new(format!(
                                "{field}.Action must be set to 'allow' or 'deny'"
                            )));
                        }
                    }
                }
            }
            Ok(())
        }
        Typed::Mesh(_) => Ok(()),
    }
}

fn validate_resolver(name: &str, resolver: &ce::ServiceResolver) -> Result<(), EntryError> {
    for (subset, definition) in &resolver.subsets {
        if subset.is_empty()
            || !subset
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(EntryError::new(format!(
                "Subsets: subset name {subset:?} is invalid; use lowercase letters, digits and '-'"
            )));
        }
        if !definition.filter.is_empty() {
            Filter::parse(&definition.filter).map_err(|error| {
                EntryError::new(format!(
                    "Filter for subset {subset:?} is not a valid expression: {}",
                    error.0
                ))
            })?;
        }
    }
    if !resolver.default_subset.is_empty()
        && !resolver.subsets.contains_key(&resolver.default_subset)
    {
        return Err(EntryError::new(format!(
            "DefaultSubset {:?} is not a valid subset",
            resolver.default_subset
        )));
    }
    if let Some(redirect) = &resolver.redirect {
        if !resolver.failover.is_empty() {
            return Err(EntryError::new("Redirect and Failover cannot both be set"));
        }
        if !resolver.subsets.is_empty() {
            return Err(EntryError::new("Redirect and Subsets cannot both be set"));
        }
        if !resolver.default_subset.is_empty() {
            return Err(EntryError::new(
                "Redirect and DefaultSubset cannot both be set",
            ));
        }
        let targets_self = (redirect.service.is_empty() || redirect.service == name)
            && redirect.service_subset.is_empty()
            && redirect.datacenter.is_empty()
            && redirect.peer.is_empty()
            && redirect.sameness_group.is_empty();
        if targets_self {
            return Err(EntryError::new(
                "Redirect is empty: name a different Service, ServiceSubset, Datacenter, Peer or SamenessGroup",
            ));
        }
        if !redirect.service_subset.is_empty() && redirect.service.is_empty() && name.is_empty() {
            return Err(EntryError::new(
                "Redirect.ServiceSubset needs Redirect.Service",
            ));
        }
    }
    for (subset, failover) in &resolver.failover {
        let field = format!("Failover[{subset:?}]");
        if subset != "*" && !resolver.subsets.contains_key(subset) {
            return Err(EntryError::new(format!("{field}: not a valid subset")));
        }
        let classic = !failover.service.is_empty()
            || !failover.service_subset.is_empty()
            || !failover.namespace.is_empty()
            || !failover.datacenters.is_empty();
        if !failover.targets.is_empty() && classic {
            return Err(EntryError::new(format!(
                "{field}: Targets cannot be set with Service, ServiceSubset, Namespace, or Datacenters"
            )));
        }
        if failover.targets.is_empty() && !classic && failover.sameness_group.is_empty() {
            return Err(EntryError::new(format!(
                "{field}: one of Service, ServiceSubset, Namespace, Targets, SamenessGroup, or Datacenters is required"
            )));
        }
        for (i, target) in failover.targets.iter().enumerate() {
            if target.service.is_empty()
                && target.service_subset.is_empty()
                && target.datacenter.is_empty()
                && target.peer.is_empty()
                && target.namespace.is_empty()
                && target.partition.is_empty()
            {
                return Err(EntryError::new(format!("{field}.Targets[{i}] is empty")));
            }
            if !target.datacenter.is_empty() && !target.peer.is_empty() {
                return Err(EntryError::new(format!(
                    "{field}.Targets[{i}]: Peer cannot be set with Datacenter"
                )));
            }
        }
        if failover.datacenters.iter().any(String::is_empty) {
            return Err(EntryError::new(format!(
                "{field}.Datacenters: found empty datacenter"
            )));
        }
    }
    if let Some(timeout) = &resolver.connect_timeout {
        duration_value("ConnectTimeout", timeout)?;
    }
    if let Some(timeout) = &resolver.request_timeout {
        duration_value("RequestTimeout", timeout)?;
    }
    Ok(())
}

/// A duration field: a Go duration string or integer nanoseconds, never negative.
pub fn duration_value(field: &str, value: &Value) -> Result<std::time::Duration, EntryError> {
    match value {
        Value::String(text) if text.is_empty() => Ok(std::time::Duration::ZERO),
        Value::String(text) => parse_go_duration(text).map_err(|error| {
            EntryError::new(format!("{field}: invalid duration {text:?}: {error}"))
        }),
        Value::Number(number) => match number.as_u64() {
            Some(nanos) => Ok(std::time::Duration::from_nanos(nanos)),
            None => Err(EntryError::new(format!("{field} must be >= 0"))),
        },
        _ => Err(EntryError::new(format!(
            "{field} must be a duration like \"5s\""
        ))),
    }
}

fn protocol(value: &str, field: &str) -> Result<(), EntryError> {
    if value.is_empty() || PROTOCOLS.contains(&value) {
        Ok(())
    } else {
        Err(EntryError::new(format!(
            "{field} {value:?} is not supported; use tcp, http, http2 or grpc"
        )))
    }
}

fn one_of(field: &str, value: &str, allowed: &[&str]) -> Result<(), EntryError> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        let allowed: Vec<&str> = allowed.iter().copied().filter(|a| !a.is_empty()).collect();
        Err(EntryError::new(format!(
            "{field} {value:?} is invalid; must be one of {}",
            allowed.join(", ")
        )))
    }
}

fn regex(field: &str, pattern: &str) -> Result<(), EntryError> {
    if pattern.is_empty() {
        return Ok(());
    }
    regex::Regex::new(pattern)
        .map(|_| ())
        .map_err(|error| EntryError::new(format!("{field}: invalid regex {pattern:?}: {error}")))
}

fn paths(field: &str, exact: &str, prefix: &str, path_regex: &str) -> Result<(), EntryError> {
    let set = [
        !exact.is_empty(),
        !prefix.is_empty(),
        !path_regex.is_empty(),
    ];
    if set.iter().filter(|set| **set).count() > 1 {
        return Err(EntryError::new(format!(
            "{field} should only contain at most one of PathExact, PathPrefix, or PathRegex"
        )));
    }
    if !exact.is_empty() && !exact.starts_with('/') {
        return Err(EntryError::new(format!(
            "{field}.PathExact doesn't start with '/': {exact:?}"
        )));
    }
    if !prefix.is_empty() && !prefix.starts_with('/') {
        return Err(EntryError::new(format!(
            "{field}.PathPrefix doesn't start with '/': {prefix:?}"
        )));
    }
    regex(&format!("{field}.PathRegex"), path_regex)
}

fn header_match(field: &str, header: &HeaderMatch) -> Result<(), EntryError> {
    if header.name.is_empty() {
        return Err(EntryError::new(format!(
            "{field}: missing required Name field"
        )));
    }
    let set = [
        header.present,
        !header.exact.is_empty(),
        !header.prefix.is_empty(),
        !header.suffix.is_empty(),
        !header.contains.is_empty(),
        !header.regex.is_empty(),
    ];
    if set.iter().filter(|set| **set).count() > 1 {
        return Err(EntryError::new(format!(
            "{field} should only contain one of Present, Exact, Prefix, Suffix, Contains, or Regex"
        )));
    }
    regex(field, &header.regex)
}

fn methods(field: &str, methods: &[String]) -> Result<(), EntryError> {
    const KNOWN: &[&str] = &[
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE",
    ];
    for method in methods {
        if !KNOWN.contains(&method.as_str()) {
            return Err(EntryError::new(format!(
                "{field}.Methods contains an invalid method {method:?}"
            )));
        }
    }
    Ok(())
}

/// The protocol a service speaks: its service-defaults, else proxy-defaults' `protocol`, else
/// tcp.
pub fn service_protocol(tables: &Tables, service: &str) -> String {
    let lookup = |kind: &str, name: &str| -> Option<std::sync::Arc<Typed>> {
        tables.config_entry(kind, name).map(|entry| entry.typed())
    };
    if let Some(typed) = lookup(ce::SERVICE_DEFAULTS, service) {
        if let Typed::ServiceDefaults(defaults) = typed.as_ref() {
            if !defaults.protocol.is_empty() {
                return defaults.protocol.clone();
            }
        }
    }
    if let Some(typed) = lookup(ce::PROXY_DEFAULTS, "global") {
        if let Typed::ProxyDefaults(defaults) = typed.as_ref() {
            if let Some(protocol) = defaults.protocol() {
                return protocol.to_string();
            }
        }
    }
    "tcp".into()
}

#[cfg(test)]
#[path = "entry_tests.rs"]
mod tests;
