//! Sessions: a liveness lease that KV locks are tied to. A session is invalidated when it is
//! destroyed, its TTL runs out (the leader decides), or a check it is bound to goes critical
//! or disappears; its locks are then released or their keys deleted, per `behavior`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::RaftIndexes;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionBehavior {
    Release,
    Delete,
}

impl SessionBehavior {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionBehavior::Release => "release",
            SessionBehavior::Delete => "delete",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub id: String,
    pub name: String,
    pub node: String,
    pub lock_delay: Duration,
    pub behavior: SessionBehavior,
    pub ttl: Option<Duration>,
    pub node_checks: Vec<String>,
    pub service_checks: Vec<String>,
    pub indexes: RaftIndexes,
}
