//! Black-box integration tests: each starts the real `concord` binary and speaks only HTTP
//! (and the CLI) to it. One test binary keeps the 2-core build fast.

mod acl;
mod autopilot;
mod blocking;
mod catalog;
mod cli;
mod cluster;
mod compat;
mod connect_ca;
mod connect_entries;
mod connect_sidecar;
mod dns;
mod durability;
mod envoy;
mod errors;
mod health;
mod kv;
mod lifecycle;
mod linearizable;
mod lock;
mod mesh_failover;
mod metrics;
mod mistakes;
mod nemesis;
mod query;
mod raft_cluster;
mod recovery;
mod session;
mod sim_envoy;
mod snapshot;
mod support;
mod txn;
mod watch;
mod xds;
mod xds_convergence;
mod xds_protocol;
