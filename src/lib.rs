//! concord: a service-mesh control plane that does Consul's job in one binary and speaks
//! Consul's protocols. See ARCHITECTURE.md for the map.

pub mod acl;
pub mod agent;
pub mod api;
pub mod cli;
pub mod config;
pub mod connect;
pub mod dns;
pub mod files;
pub mod filter;
pub mod gossip;
pub mod http;
pub mod logs;
pub mod proxycfg;
pub mod raft;
pub mod rpc;
pub mod server;
pub mod snapshot;
pub mod state;
pub mod tasks;
pub mod telemetry;
pub mod template;
#[cfg(test)]
mod testing;
#[cfg(test)]
mod tidy;
pub mod tls;
pub mod types;
pub mod xds;
