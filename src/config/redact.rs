//! What `/v1/agent/self` shows of the runtime configuration (its `DebugConfig`): the
//! `RuntimeConfig` as JSON with every secret replaced by `"hidden"`, as Consul prints it.
//!
//! Secrets are found by name, as Consul finds them, at any depth and in free-form maps too
//! (node meta, bootstrap config entries, the CA's `Config`): a key naming a token, secret or
//! password, or ending in "key" (`PrivateKey`, `EncryptKey`, `api_key`), or Consul's gossip
//! `encrypt`. Everything inside such a key is hidden, so a secret-named object (`Tokens`)
//! shows no token. Consul's own rule, "the name contains key", also hides `PrivateKeyType`
//! and `KeyFile`, which are not secrets; this one shows them. Whatever its name, a PEM
//! private key is hidden too. An empty value stays empty: it says the secret is unset and
//! reveals nothing.
//!
//! Today no `RuntimeConfig` field is a secret: the CA's `PrivateKey` is refused when
//! configured (concord's CA makes its own keys) and service and check definitions, which can
//! carry tokens and headers, are not part of the JSON. The rule is here so that the secrets
//! still to come (ACL tokens, the gossip key, an operator-supplied CA key) never show, and so
//! that secrets written into free-form maps do not show now.

use serde_json::Value;

use super::RuntimeConfig;

/// What a secret shows as, Consul's word.
pub const HIDDEN: &str = "hidden";

/// The `DebugConfig` of `/v1/agent/self`: `config` as JSON with its secrets hidden.
pub fn debug_config(config: &RuntimeConfig) -> Value {
    let mut value = serde_json::to_value(config).unwrap_or(Value::Null);
    redact(&mut value);
    value
}

/// Hides every secret in `value` (see the module doc).
pub fn redact(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                if is_secret_name(key) {
                    hide_all(value);
                } else {
                    redact(value);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        Value::String(text) if is_private_key(text) => *text = HIDDEN.into(),
        _ => {}
    }
}

/// Hides every non-empty string and every number under a secret name. Booleans say whether
/// something is set, not what it is (`EnableTokenPersistence`), and stay.
fn hide_all(value: &mut Value) {
    match value {
        Value::String(text) if !text.is_empty() => *text = HIDDEN.into(),
        Value::Number(_) => *value = Value::String(HIDDEN.into()),
        Value::Object(map) => map.values_mut().for_each(hide_all),
        Value::Array(items) => items.iter_mut().for_each(hide_all),
        _ => {}
    }
}

/// Whether a config key names a secret, in any spelling (`PrivateKey`, `private_key`,
/// `acl-token`).
pub fn is_secret_name(name: &str) -> bool {
    let folded: String = name
        .chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect();
    ["token", "secret", "password"]
        .iter()
        .any(|word| folded.contains(word))
        || folded.ends_with("key")
        || folded == "encrypt"
}

fn is_private_key(text: &str) -> bool {
    text.contains("-----BEGIN") && text.contains("PRIVATE KEY-----")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn secret_names_are_recognised_in_any_spelling() {
        for secret in [
            "PrivateKey",
            "private_key",
            "EncryptKey",
            "encrypt",
            "api-key",
            "key",
            "Token",
            "acl_agent_token",
            "Tokens",
            "ClientSecret",
            "password",
        ] {
            assert!(is_secret_name(secret), "{secret} is a secret");
        }
        for plain in [
            "PrivateKeyType",
            "PrivateKeyBits",
            "KeyFile",
            "Datacenter",
            "NodeName",
            "LeafCertTTL",
            "RootCert",
        ] {
            assert!(!is_secret_name(plain), "{plain} is not a secret");
        }
    }

    #[test]
    fn secrets_are_hidden_at_any_depth_and_the_rest_is_kept() {
        let pem = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEE\n-----END EC PRIVATE KEY-----\n";
        let mut config = json!({
            "Datacenter": "dc1",
            "Encrypt": "pUqJrVyVRj5jsiYEkM/tFQ==",
            "ACL": {
                "EnableTokenPersistence": true,
                "Tokens": {"Default": "00000000-aaaa", "Agent": "", "Replication": ["r1"]},
            },
            "CAConfig": {
                "PrivateKey": pem,
                "PrivateKeyType": "ec",
                "PrivateKeyBits": 256,
                "RootCert": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
            },
            "NodeMeta": {"rack": "r1", "api_token": "t0k3n"},
            "Bootstrap": [{"Kind": "proxy-defaults", "Config": {"cert_chain": pem, "pin": 1234}}],
        });
        redact(&mut config);
        assert_eq!(
            config,
            json!({
                "Datacenter": "dc1",
                "Encrypt": "hidden",
                "ACL": {
                    "EnableTokenPersistence": true,
                    "Tokens": {"Default": "hidden", "Agent": "", "Replication": ["hidden"]},
                },
                "CAConfig": {
                    "PrivateKey": "hidden",
                    "PrivateKeyType": "ec",
                    "PrivateKeyBits": 256,
                    "RootCert": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
                },
                "NodeMeta": {"rack": "r1", "api_token": "hidden"},
                "Bootstrap": [{"Kind": "proxy-defaults", "Config": {"cert_chain": "hidden", "pin": 1234}}],
            })
        );
    }
}
