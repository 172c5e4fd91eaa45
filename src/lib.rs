//! concord: a service-mesh control plane that does Consul's job in one binary and speaks
//! Consul's protocols. See ARCHITECTURE.md for the map.

pub mod types;
pub mod state;
pub mod raft;
pub mod config;
