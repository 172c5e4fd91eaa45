//! Connect's replicated data: proxy registrations, config entries and the CA's state.
//!
//! A config entry is stored as its canonical JSON text plus indexes. Entries carry many
//! fields concord passes through without interpreting (`EnvoyExtensions`, `RateLimits`, ...),
//! and bincode cannot hold a `serde_json::Value`; the text keeps every field a user wrote, and
//! `config_entry` parses it into a typed view once, on first use.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};

use super::config_entry::Typed;
use super::RaftIndexes;

/// `Proxy` of a `connect-proxy` service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceProxy {
    pub destination_service_name: String,
    pub destination_service_id: String,
    pub local_service_address: String,
    pub local_service_port: u16,
    pub mode: String,
    /// The opaque `Config` map, as JSON text ("" when absent).
    pub config_json: String,
    pub upstreams: Vec<Upstream>,
}

/// One upstream a proxy listens for locally.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upstream {
    /// `service` (default) or `prepared_query`.
    pub destination_type: String,
    pub destination_name: String,
    pub datacenter: String,
    pub local_bind_address: String,
    pub local_bind_port: u16,
    /// The opaque `Config` map, as JSON text ("" when absent).
    pub config_json: String,
}

/// A stored config entry.
#[derive(Debug, Serialize, Deserialize)]
pub struct ConfigEntry {
    pub kind: String,
    pub name: String,
    /// Canonical (PascalCase) JSON object without `CreateIndex`/`ModifyIndex`.
    pub json: String,
    pub indexes: RaftIndexes,
    #[serde(skip)]
    typed: OnceLock<Arc<Typed>>,
}

impl ConfigEntry {
    pub fn new(kind: String, name: String, json: String) -> ConfigEntry {
        ConfigEntry {
            kind,
            name,
            json,
            indexes: RaftIndexes::default(),
            typed: OnceLock::new(),
        }
    }

    /// The typed view. Stored entries were validated before they were written, so parsing
    /// cannot fail; if a future version reads an entry it no longer understands, it sees an
    /// empty view of the kind rather than panicking.
    pub fn typed(&self) -> Arc<Typed> {
        self.typed
            .get_or_init(|| {
                Arc::new(
                    super::config_entry::parse_stored(&self.kind, &self.json)
                        .unwrap_or_else(|_| Typed::unknown(&self.kind)),
                )
            })
            .clone()
    }
}

impl Clone for ConfigEntry {
    fn clone(&self) -> Self {
        ConfigEntry {
            kind: self.kind.clone(),
            name: self.name.clone(),
            json: self.json.clone(),
            indexes: self.indexes,
            typed: self.typed.clone(),
        }
    }
}

impl PartialEq for ConfigEntry {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind
            && self.name == other.name
            && self.json == other.json
            && self.indexes == other.indexes
    }
}

impl Eq for ConfigEntry {}

/// The built-in CA's configuration (`/v1/connect/ca/configuration`, provider `consul`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaConfig {
    pub leaf_cert_ttl_secs: u64,
    pub intermediate_cert_ttl_secs: u64,
    pub root_cert_ttl_secs: u64,
    pub private_key_type: String,
    pub private_key_bits: u32,
    /// 0 turns the limit off.
    pub csr_max_per_second: u32,
    pub csr_max_concurrent: u32,
    /// The TTLs as the operator wrote them (`LeafCertTTL` → `"1440m"`), which Consul shows
    /// back unchanged; keys absent here are shown in their shortest form.
    #[serde(with = "super::shape::added_in_v2")]
    pub durations_as_given: Option<BTreeMap<String, String>>,
}

impl Default for CaConfig {
    fn default() -> Self {
        CaConfig {
            leaf_cert_ttl_secs: 72 * 3600,
            intermediate_cert_ttl_secs: 8760 * 3600,
            root_cert_ttl_secs: 87600 * 3600,
            private_key_type: "ec".into(),
            private_key_bits: 256,
            csr_max_per_second: 50,
            csr_max_concurrent: 0,
            durations_as_given: None,
        }
    }
}

/// One CA root. The private key is replicated (as Consul's provider state is) so that any
/// server that becomes leader can sign; the HTTP API never exposes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaRoot {
    /// Colon-hex subject key id.
    pub id: String,
    pub name: String,
    pub serial: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// Cross-signed certificates that chain this root to older ones.
    pub intermediate_certs: Vec<String>,
    pub not_before_unix: i64,
    pub not_after_unix: i64,
    pub active: bool,
    pub key_type: String,
    pub key_bits: u32,
    /// When a rotation made this root inactive (0 while active); pruning counts from here.
    pub rotated_out_unix: i64,
    pub indexes: RaftIndexes,
}

/// Everything the CA keeps in the Raft log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaState {
    pub cluster_id: String,
    pub config: CaConfig,
    pub roots: Vec<CaRoot>,
    /// Index of the last write to this state (for the leader's compare-and-set).
    pub indexes: RaftIndexes,
}

impl CaState {
    pub fn trust_domain(&self) -> String {
        format!("{}.consul", self.cluster_id)
    }

    pub fn active_root(&self) -> Option<&CaRoot> {
        self.roots.iter().find(|root| root.active)
    }
}
