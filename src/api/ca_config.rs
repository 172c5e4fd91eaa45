//! The CA configuration's `Config` map as Consul shows it (`GET
//! /v1/connect/ca/configuration`, and `DebugConfig`), built from the typed configuration.

use std::time::Duration;

use serde_json::{json, Value};

use crate::types::connect::CaConfig;
use crate::types::duration::format_go_duration;

/// The `Config` map `GET /v1/connect/ca/configuration` shows. Durations are shown as they were
/// given (Consul echoes the string it was sent, and clients compare against what they set);
/// one never given as text is written as people write them (`72h`, `1h30m`), not Go's
/// `72h0m0s`.
pub fn config(config: &CaConfig) -> Value {
    let given = config.durations_as_given.as_ref();
    let ttl = |key: &str, secs: u64| {
        given
            .and_then(|given| given.get(key))
            .cloned()
            .unwrap_or_else(|| short_duration(Duration::from_secs(secs)))
    };
    json!({
        "CSRMaxConcurrent": config.csr_max_concurrent,
        "CSRMaxPerSecond": config.csr_max_per_second,
        "IntermediateCertTTL": ttl("IntermediateCertTTL", config.intermediate_cert_ttl_secs),
        "LeafCertTTL": ttl("LeafCertTTL", config.leaf_cert_ttl_secs),
        "PrivateKeyBits": config.private_key_bits,
        "PrivateKeyType": config.private_key_type,
        "RootCertTTL": ttl("RootCertTTL", config.root_cert_ttl_secs),
    })
}

/// Whole seconds in the fewest units: `72h`, `1h30m`, `45s`; zero is `0s`.
fn short_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    if secs == 0 || duration.subsec_nanos() != 0 {
        return format_go_duration(duration);
    }
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    for (value, unit) in [(h, "h"), (m, "m"), (s, "s")] {
        if value > 0 {
            out.push_str(&format!("{value}{unit}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_written() {
        let cases = [
            (72 * 3600, "72h"),
            (5400, "1h30m"),
            (45, "45s"),
            (3661, "1h1m1s"),
            (0, "0s"),
        ];
        for (secs, text) in cases {
            assert_eq!(short_duration(Duration::from_secs(secs)), text);
        }
        assert_eq!(config(&CaConfig::default())["LeafCertTTL"], "72h");
    }
}
