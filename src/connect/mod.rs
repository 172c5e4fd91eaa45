//! Connect: what the mesh decides, as pure functions of the state: config-entry validation
//! (per entry and across the graph), intentions, the discovery chain, and the built-in CA's
//! certificate work (roots, cross-signing, leaf signing, SPIFFE ids, mesh TLS). Whatever needs
//! Raft or runs over time lives with its owner: the CA's leader side in `rpc::ca_manager`, the
//! agent's leaf certificates in `agent::leaf`. The xDS server only delivers these decisions.

pub mod ca;
pub mod ca_config;
pub mod chain;
pub mod entry;
pub mod graph;
pub mod intention;
pub mod tls;

pub use entry::EntryError;
