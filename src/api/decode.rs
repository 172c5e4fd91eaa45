//! Request decoding that accepts what Consul accepts: Go's JSON decoder matches field names
//! case-insensitively, and Consul also takes snake_case spellings (`tagged_addresses`). This
//! rewrites every known field name, however spelled, to its canonical PascalCase before serde
//! sees it. Keys inside free-form maps (`Meta`, `NodeMeta`, ...) are user data and kept as
//! written.

use serde_json::{Map, Value};

/// Canonical field names, matched ignoring case and underscores.
const FIELDS: &[&str] = &[
    "Enabled",
    "DNS",
    "Token",
    "Template",
    "ServiceMeta",
    "RemoveEmptyTags",
    "Regexp",
    "OnlyPassing",
    "Near",
    "NearestN",
    "IgnoreCheckIDs",
    "Failover",
    "Datacenters",
    "Address",
    "AliasNode",
    "AliasService",
    "Args",
    "Behavior",
    "Body",
    "Check",
    "CheckID",
    "Config",
    "Connect",
    "DestinationName",
    "DestinationServiceID",
    "DestinationServiceName",
    "DestinationType",
    "LocalBindAddress",
    "LocalBindPort",
    "LocalServiceAddress",
    "LocalServicePort",
    "Mode",
    "Native",
    "Proxy",
    "SidecarService",
    "Upstreams",
    "Checks",
    "Datacenter",
    "Definition",
    "DeregisterCriticalServiceAfter",
    "EnableTagOverride",
    "Errors",
    "FailuresBeforeCritical",
    "FailuresBeforeWarning",
    "Flags",
    "GRPC",
    "H2PING",
    "HTTP",
    "Header",
    "ID",
    "Index",
    "Interval",
    "KV",
    "Key",
    "LockDelay",
    "Locality",
    "Kind",
    "Meta",
    "Method",
    "ModifyIndex",
    "Name",
    "Node",
    "NodeChecks",
    "NodeMeta",
    "Notes",
    "Output",
    "OutputMaxSize",
    "Passing",
    "Region",
    "Port",
    "ScriptArgs",
    "Service",
    "ServiceChecks",
    "ServiceID",
    "ServiceName",
    "ServiceTags",
    "Session",
    "SkipNodeUpdate",
    "Status",
    "SuccessBeforePassing",
    "TCP",
    "TLSSkipVerify",
    "TTL",
    "TaggedAddresses",
    "Tags",
    "Timeout",
    "Type",
    "UDP",
    "Value",
    "Verb",
    "Warning",
    "Weights",
    "Zone",
];

/// Fields whose object value is a map of user-chosen keys.
const FREE_FORM_MAPS: &[&str] = &[
    "Meta",
    "NodeMeta",
    "ServiceMeta",
    "TaggedAddresses",
    "Header",
    "Config",
];

fn fold(name: &str) -> String {
    name.chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

fn canonical_name(name: &str) -> String {
    let folded = fold(name);
    FIELDS
        .iter()
        .find(|field| fold(field) == folded)
        .map_or_else(|| name.to_string(), |field| field.to_string())
}

/// Rewrites field names throughout `value` to their canonical spelling, and drops fields set
/// to `null`: Go's decoder leaves such a field at its zero value, as if it were absent (so
/// `"Tags": null`, Go's own encoding of an empty list, reads as no tags).
pub fn canonicalize(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(_, value)| !value.is_null())
                .map(|(key, value)| {
                    let key = canonical_name(&key);
                    let value = if FREE_FORM_MAPS.contains(&key.as_str()) {
                        keep_keys(value)
                    } else {
                        canonicalize(value)
                    };
                    (key, value)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(canonicalize).collect()),
        other => other,
    }
}

/// Keeps a free-form map's own keys but canonicalises objects inside it (a service's tagged
/// addresses are `{name: {Address, Port}}`).
fn keep_keys(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(key, value)| (key, canonicalize(value)))
                .collect::<Map<_, _>>(),
        ),
        other => other,
    }
}

/// Why a wire shape could not be decoded into a domain value: a body that is not JSON of the
/// right shape, or a field breaking one of Consul's rules. The message is Consul's and names
/// the field; the client sent it, so the HTTP edge answers 400 (config loading reports it
/// naming the file). Callers only report it, so it is one kind.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DecodeError {
    message: String,
    /// A well-formed definition this agent's policy refuses (a script check with scripts
    /// off), which Consul answers with a 500 rather than the client's 400.
    refused_by_agent: bool,
}

impl DecodeError {
    pub(crate) fn new(message: impl Into<String>) -> DecodeError {
        DecodeError {
            message: message.into(),
            refused_by_agent: false,
        }
    }

    pub(crate) fn refused_by_agent(message: impl Into<String>) -> DecodeError {
        DecodeError {
            message: message.into(),
            refused_by_agent: true,
        }
    }

    /// Whether the definition is well formed and this agent's policy refuses it.
    pub fn is_refused_by_agent(&self) -> bool {
        self.refused_by_agent
    }

    /// The same error located inside a larger request: `"<place>: <message>"`.
    pub fn within(self, place: impl std::fmt::Display) -> DecodeError {
        DecodeError {
            message: format!("{place}: {}", self.message),
            ..self
        }
    }
}

/// Parses a JSON request body with Consul's field-name leniency.
pub fn from_slice<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    from_slice_worded(bytes, "Request decode failed")
}

/// `from_slice` for an endpoint whose failures Consul words its own way: `<wording>: <reason>`
/// (the txn endpoint's `Failed to parse body`).
pub fn from_slice_worded<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    wording: &str,
) -> Result<T, DecodeError> {
    let refuse = |reason: &dyn std::fmt::Display| DecodeError::new(format!("{wording}: {reason}"));
    let value: Value = serde_json::from_slice(bytes).map_err(|error| refuse(&error))?;
    serde_json::from_value(canonicalize(value)).map_err(|error| refuse(&error))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn null_fields_read_as_absent_as_go_reads_them() {
        #[derive(Debug, Default, serde::Deserialize)]
        #[serde(rename_all = "PascalCase", default)]
        struct Shape {
            tags: Vec<String>,
            name: String,
        }
        let shape: Shape = from_slice(br#"{"Tags": null, "name": "web"}"#).unwrap();
        assert!(shape.tags.is_empty());
        assert_eq!(shape.name, "web");
    }

    #[test]
    fn any_case_and_snake_case_become_pascal_case_but_meta_keys_stay() {
        let input = json!({
            "node": "n1",
            "tagged_addresses": {"lan_ipv4": "10.0.0.1"},
            "service": {"service": "web", "meta": {"owner_team": "x"}, "enable_tag_override": true},
            "checks": [{"checkid": "c", "service_id": "web"}]
        });
        assert_eq!(
            canonicalize(input),
            json!({
                "Node": "n1",
                "TaggedAddresses": {"lan_ipv4": "10.0.0.1"},
                "Service": {"Service": "web", "Meta": {"owner_team": "x"}, "EnableTagOverride": true},
                "Checks": [{"CheckID": "c", "ServiceID": "web"}]
            })
        );
    }
}
