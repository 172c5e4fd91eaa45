//! The CA configuration's `Config` map as Consul shows it (`GET
//! /v1/connect/ca/configuration`, and `DebugConfig`), built from the typed configuration.

use std::time::Duration;

use serde_json::{json, Value};

use crate::types::connect::CaConfig;
use crate::types::duration::format_go_duration;

/// The `Config` map `GET /v1/connect/ca/configuration` shows.
pub fn config(config: &CaConfig) -> Value {
    let ttl = |secs: u64| format_go_duration(Duration::from_secs(secs));
    json!({
        "CSRMaxConcurrent": config.csr_max_concurrent,
        "CSRMaxPerSecond": config.csr_max_per_second,
        "IntermediateCertTTL": ttl(config.intermediate_cert_ttl_secs),
        "LeafCertTTL": ttl(config.leaf_cert_ttl_secs),
        "PrivateKeyBits": config.private_key_bits,
        "PrivateKeyType": config.private_key_type,
        "RootCertTTL": ttl(config.root_cert_ttl_secs),
    })
}
