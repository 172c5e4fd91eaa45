//! Gossip membership: SWIM through foca, as Consul's serf LAN pool (and later the WAN pool).
//!
//! - `identity`: who a member is (name, gossip address, start time, tags);
//! - `codec`: foca's headers and member updates on the wire;
//! - `transport`: UDP on the serf port, or an in-memory network for tests, behind one trait;
//! - `coordinate`: Vivaldi network coordinates from round trips to other members;
//! - `keyring`: gossip encryption (AES-GCM with the keyring's keys) and message framing;
//! - `keyops`: keyring operations run on every member (`keyring -install`, ...);
//! - `messages`: what the pool spreads beside member updates (leave intents, user events);
//! - `pool`: the task that owns foca and everything that drives it (received packets, timers,
//!   joins, leave), with memberlist's timings;
//! - `lan`: this agent's LAN pool: its identity and tags, its socket, and the configured
//!   joins (`start_join`, `retry_join`).
//!
//! Architecture invariant: one task owns each pool's protocol state and takes a closed input
//! enum; the rest of the agent sees members, events and a join/leave API.

pub mod codec;
pub mod coordinate;
pub mod identity;
pub mod keyops;
pub mod keyring;
pub mod lan;
pub mod messages;
pub mod pool;
#[cfg(test)]
mod tests;
pub mod transport;

pub use identity::NodeIdentity;
pub use messages::UserEvent;
pub use pool::{FireError, ForceLeaveError, JoinError, Member, MemberEvent, MemberStatus, Pool};
