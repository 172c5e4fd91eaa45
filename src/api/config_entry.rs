//! Config entries on the wire: key spellings in, Consul's JSON out.
//!
//! `consul config write` and `/v1/config` accept PascalCase and snake_case keys (HCL files are
//! usually snake_case). Entries have well over a hundred field names, so rather than list them
//! this converts any snake_case key to PascalCase with Consul's acronyms (`external_sni` ->
//! `ExternalSNI`). Keys inside user maps (`Meta`, header maps, proxy `Config`) are user data
//! and kept; keys of named-object maps (`Subsets`, `Failover`) are kept while their values are
//! converted.

use serde_json::{Map, Value};

/// Words Consul spells in capitals inside field names.
const ACRONYMS: &[(&str, &str)] = &[
    ("http", "HTTP"),
    ("tls", "TLS"),
    ("jwt", "JWT"),
    ("sni", "SNI"),
    ("json", "JSON"),
    ("id", "ID"),
    ("ip", "IP"),
    ("kb", "KB"),
    ("sds", "SDS"),
    ("ca", "CA"),
    ("ttl", "TTL"),
    ("url", "URL"),
    ("uri", "URI"),
];

/// Whole words whose PascalCase form is not the mechanical one.
const SPECIAL: &[(&str, &str)] = &[("mutual_tls_mode", "MutualTLSMode")];

/// Values kept exactly as written: user data.
const OPAQUE: &[&str] = &[
    "Meta",
    "Config",
    "Arguments",
    "LegacyMeta",
    "Add",
    "Set",
    "EnvoyListenerJSON",
    "EnvoyClusterJSON",
];

/// Maps whose keys are user-chosen names but whose values are entry structure.
const NAMED: &[&str] = &["Subsets", "Failover"];

/// PascalCase of one key; keys already starting with a capital are left alone.
pub fn pascal_key(key: &str) -> String {
    if key.starts_with(|c: char| c.is_ascii_uppercase()) {
        return key.to_string();
    }
    let lower = key.to_ascii_lowercase();
    if let Some((_, special)) = SPECIAL.iter().find(|(snake, _)| *snake == lower) {
        return special.to_string();
    }
    lower
        .split(['_', '-'])
        .filter(|word| !word.is_empty())
        .map(
            |word| match ACRONYMS.iter().find(|(from, _)| *from == word) {
                Some((_, to)) => to.to_string(),
                None => {
                    let mut chars = word.chars();
                    chars
                        .next()
                        .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                        .unwrap_or_default()
                }
            },
        )
        .collect()
}

/// Rewrites every structural key of an entry to PascalCase.
pub fn normalize(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(key, value)| {
                    let key = pascal_key(&key);
                    let value = if OPAQUE.contains(&key.as_str()) {
                        value
                    } else if NAMED.contains(&key.as_str()) {
                        keep_keys(value)
                    } else {
                        normalize(value)
                    };
                    (key, value)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(normalize).collect()),
        other => other,
    }
}

fn keep_keys(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(key, value)| (key, normalize(value)))
                .collect::<Map<_, _>>(),
        ),
        other => normalize(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn snake_case_becomes_consuls_pascal_case_with_acronyms() {
        assert_eq!(pascal_key("external_sni"), "ExternalSNI");
        assert_eq!(pascal_key("max_request_headers_kb"), "MaxRequestHeadersKB");
        assert_eq!(pascal_key("mutual_tls_mode"), "MutualTLSMode");
        assert_eq!(pascal_key("http"), "HTTP");
        assert_eq!(pascal_key("legacy_id"), "LegacyID");
        assert_eq!(pascal_key("service_subset"), "ServiceSubset");
        assert_eq!(pascal_key("ServiceSubset"), "ServiceSubset");
        assert_eq!(pascal_key("kind"), "Kind");
    }

    #[test]
    fn user_maps_keep_their_keys_and_named_maps_convert_their_values() {
        let input = json!({
            "kind": "service-resolver",
            "meta": {"owner_team": "a"},
            "subsets": {"v1_canary": {"only_passing": true}},
            "failover": {"*": {"service_subset": "v1_canary"}},
        });
        assert_eq!(
            normalize(input),
            json!({
                "Kind": "service-resolver",
                "Meta": {"owner_team": "a"},
                "Subsets": {"v1_canary": {"OnlyPassing": true}},
                "Failover": {"*": {"ServiceSubset": "v1_canary"}},
            })
        );
    }
}
