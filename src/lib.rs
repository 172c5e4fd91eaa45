//! concord: a service-mesh control plane that does Consul's job in one binary and speaks
//! Consul's protocols. See ARCHITECTURE.md for the map.

pub mod types;
pub mod state;
pub mod raft;
pub mod config;
pub mod acl;
pub mod api;
pub mod http;
pub mod rpc;
pub mod server;
pub mod cli;
