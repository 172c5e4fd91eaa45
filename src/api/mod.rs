//! Consul's JSON wire shapes, with explicit conversions from and to the domain types (catalog,
//! KV, sessions, the discovery chain, legacy intentions, the CA configuration), the decoder that
//! accepts Consul's key spellings, and the typed HTTP client the CLI uses.
//!
//! Architecture invariant: the domain model never derives Consul's JSON. A field renamed on the
//! wire changes this module only.

pub mod acl;
pub mod ca_config;
pub mod catalog;
pub mod chain;
pub mod client;
pub mod config_entry;
pub mod decode;
pub mod definition;
pub mod intention;
pub mod kv;
pub mod operator;
pub mod proxy;
pub mod query;
pub mod replicate;
pub mod session;
pub mod txn;
pub mod watch;

pub use decode::DecodeError;

/// The Consul release whose HTTP API this build matches; what `/v1/agent/version` and
/// `/v1/agent/self` report, since clients compare it.
pub const CONSUL_COMPAT_VERSION: &str = "1.21.0";

/// concord's own version.
pub const CONCORD_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The version string reported to clients: Consul's, with concord's as build metadata so
/// version parsers accept it.
pub fn human_version() -> String {
    format!("{CONSUL_COMPAT_VERSION}+concord.{CONCORD_VERSION}")
}
