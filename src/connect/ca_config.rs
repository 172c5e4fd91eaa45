//! The built-in CA's configuration: parsing Consul's `Config` map (from the agent's
//! `connect.ca_config` or `PUT /v1/connect/ca/configuration`) and its validation rules, with
//! Consul's messages.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::types::connect::CaConfig;
use crate::types::duration::{format_go_duration, parse_go_duration};

/// Keys the `consul` provider accepts, folded (lowercase, no underscores) to their canonical
/// spelling.
const KEYS: &[&str] = &[
    "LeafCertTTL",
    "IntermediateCertTTL",
    "RootCertTTL",
    "PrivateKeyType",
    "PrivateKeyBits",
    "CSRMaxPerSecond",
    "CSRMaxConcurrent",
    "PrivateKey",
    "RootCert",
    "SkipValidate",
];

/// Why a CA configuration was refused; the message is Consul's. The client sent it, so the
/// HTTP edge answers 400 (a recorded deviation from Consul's 500); config loading names the
/// `connect.ca_config` key. Callers only report it, so it is one kind.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CaConfigError(String);

impl CaConfigError {
    fn new(message: impl Into<String>) -> CaConfigError {
        CaConfigError(message.into())
    }
}

fn fold(key: &str) -> String {
    key.chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

fn canonical(key: &str) -> Option<&'static str> {
    let folded = fold(key);
    KEYS.iter().copied().find(|known| fold(known) == folded)
}

fn ttl(key: &str, value: &Value) -> Result<Duration, CaConfigError> {
    match value {
        Value::String(text) => parse_go_duration(text).map_err(|error| {
            CaConfigError::new(format!("{key}: invalid duration {text:?}: {error}"))
        }),
        Value::Number(number) => number
            .as_u64()
            .map(Duration::from_nanos)
            .ok_or_else(|| CaConfigError::new(format!("{key} must be a positive duration"))),
        _ => Err(CaConfigError::new(format!(
            "{key} must be a duration like \"72h\""
        ))),
    }
}

fn number(key: &str, value: &Value) -> Result<f64, CaConfigError> {
    match value {
        Value::Number(number) => number
            .as_f64()
            .ok_or_else(|| CaConfigError::new(format!("{key} must be a number"))),
        // Consul decodes weakly typed: "50" is 50.
        Value::String(text) => text
            .trim()
            .parse()
            .map_err(|_| CaConfigError::new(format!("{key} must be a number, not {text:?}"))),
        _ => Err(CaConfigError::new(format!("{key} must be a number"))),
    }
}

/// Applies the keys of `config` over `base` and validates the result.
pub fn apply(base: &CaConfig, config: &Map<String, Value>) -> Result<CaConfig, CaConfigError> {
    let mut out = base.clone();
    for (key, value) in config {
        let Some(known) = canonical(key) else {
            return Err(CaConfigError::new(format!(
                "unknown CA config key {key:?}; the consul provider accepts {}",
                KEYS.join(", ")
            )));
        };
        let seconds = match known {
            "LeafCertTTL" => Some(&mut out.leaf_cert_ttl_secs),
            "IntermediateCertTTL" => Some(&mut out.intermediate_cert_ttl_secs),
            "RootCertTTL" => Some(&mut out.root_cert_ttl_secs),
            _ => None,
        };
        if let Some(seconds) = seconds {
            *seconds = ttl(known, value)?.as_secs();
            // Kept as written, to be shown back as Consul does; a number is shown computed.
            let given = out.durations_as_given.get_or_insert_with(Default::default);
            match value.as_str() {
                Some(text) => given.insert(known.to_string(), text.trim().to_string()),
                None => given.remove(known),
            };
            continue;
        }
        match known {
            "PrivateKeyType" => {
                out.private_key_type = value
                    .as_str()
                    .ok_or_else(|| CaConfigError::new("PrivateKeyType must be a string"))?
                    .to_ascii_lowercase()
            }
            "PrivateKeyBits" => out.private_key_bits = number(known, value)? as u32,
            "CSRMaxPerSecond" => out.csr_max_per_second = number(known, value)?.max(0.0) as u32,
            "CSRMaxConcurrent" => out.csr_max_concurrent = number(known, value)?.max(0.0) as u32,
            "SkipValidate" => {}
            // An operator-supplied root key and certificate.
            _ => {
                if value.as_str().is_some_and(|text| !text.is_empty()) {
                    return Err(CaConfigError::new(format!(
                        "{known} is not supported: concord's CA generates its own root keys; change PrivateKeyType or PrivateKeyBits to rotate"
                    )));
                }
            }
        }
    }
    validate(&out)?;
    Ok(out)
}

/// Consul's rules, in Consul's order.
pub fn validate(config: &CaConfig) -> Result<(), CaConfigError> {
    let hours = |secs: u64| Duration::from_secs(secs);
    let leaf = hours(config.leaf_cert_ttl_secs);
    let intermediate = hours(config.intermediate_cert_ttl_secs);
    let root = hours(config.root_cert_ttl_secs);
    if root <= intermediate {
        return Err(CaConfigError::new(format!(
            "root cert TTL is set and is not greater than intermediate cert ttl. root cert ttl: {}, intermediate cert ttl: {}",
            format_go_duration(root),
            format_go_duration(intermediate)
        )));
    }
    if leaf < Duration::from_secs(3600) {
        return Err(CaConfigError::new(
            "leaf cert TTL must be greater or equal than 1h0m0s",
        ));
    }
    if leaf >= Duration::from_secs(8760 * 3600) {
        return Err(CaConfigError::new(
            "leaf cert TTL must be less than 8760h0m0s",
        ));
    }
    if intermediate < Duration::from_secs(3 * 3600) {
        return Err(CaConfigError::new(
            "Intermediate Cert TTL must be greater or equal than 3h",
        ));
    }
    if intermediate < 3 * leaf {
        return Err(CaConfigError::new(format!(
            "Intermediate Cert TTL must be greater or equal than 3 * LeafCertTTL (>={}).",
            format_go_duration(3 * leaf)
        )));
    }
    match config.private_key_type.as_str() {
        "ec" => match config.private_key_bits {
            256 | 384 => Ok(()),
            224 | 521 => Err(CaConfigError::new(format!(
                "PrivateKeyBits {} is not supported for ec keys by concord's CA; use 256 or 384",
                config.private_key_bits
            ))),
            _ => Err(CaConfigError::new(
                "EC key length must be one of (224, 256, 384, 521) bits",
            )),
        },
        "rsa" => Err(CaConfigError::new(
            "PrivateKeyType \"rsa\" is not supported by concord's CA; use \"ec\" (256 or 384 bits)",
        )),
        _ => Err(CaConfigError::new(
            "private key type must be either 'ec' or 'rsa'",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn apply_json(value: Value) -> Result<CaConfig, String> {
        apply(&CaConfig::default(), value.as_object().expect("object"))
            .map_err(|error| error.to_string())
    }

    #[test]
    fn snake_and_pascal_keys_both_apply() {
        let config = apply_json(json!({"leaf_cert_ttl": "24h", "PrivateKeyBits": 384})).unwrap();
        assert_eq!(config.leaf_cert_ttl_secs, 24 * 3600);
        assert_eq!(config.private_key_bits, 384);
    }

    #[test]
    fn each_rule_refuses_with_consuls_message() {
        let cases = [
            (
                json!({"PrivateKeyType": "dsa"}),
                "private key type must be either 'ec' or 'rsa'",
            ),
            (
                json!({"PrivateKeyType": "rsa", "PrivateKeyBits": 2048}),
                "\"rsa\" is not supported",
            ),
            (
                json!({"PrivateKeyBits": 300}),
                "EC key length must be one of",
            ),
            (
                json!({"LeafCertTTL": "30m"}),
                "leaf cert TTL must be greater or equal than 1h0m0s",
            ),
            (
                json!({"LeafCertTTL": "9000h"}),
                "leaf cert TTL must be less than 8760h0m0s",
            ),
            (
                json!({"LeafCertTTL": "4000h"}),
                "3 * LeafCertTTL (>=12000h0m0s)",
            ),
            (
                json!({"RootCertTTL": "1h"}),
                "root cert TTL is set and is not greater",
            ),
            (json!({"Bogus": 1}), "unknown CA config key \"Bogus\""),
        ];
        for (input, expected) in cases {
            let error = apply_json(input.clone()).unwrap_err();
            assert!(error.contains(expected), "{input}: {error}");
        }
    }
}
