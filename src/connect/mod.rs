//! Connect: what the mesh decides. Config-entry validation, intentions, the discovery chain,
//! the built-in CA and agent-side leaf certificates. The xDS server (a protocol edge) only
//! delivers these decisions to Envoy.

pub mod ca;
pub mod ca_config;
pub mod ca_manager;
pub mod chain;
pub mod entry;
pub mod graph;
pub mod intention;
pub mod leaf;
pub mod tls;
