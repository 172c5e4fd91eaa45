//! What a secondary datacenter's leader replicates from the primary (Consul's ACL and config
//! entry replication), and the shape it travels in: one list per kind with the primary's
//! index for it, read with a blocking query on `GET /v1/internal/replicate/<kind>` through
//! `?dc=` forwarding. This is concord's own server-to-server shape (the domain types as they
//! are, secrets included for tokens), not one of Consul's public ones.

use serde::{Deserialize, Serialize};

/// The global objects a secondary copies from the primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replicated {
    /// Every config entry, `service-intentions` (so intentions) included.
    ConfigEntries,
    Policies,
    Roles,
    /// Tokens that are not `Local`.
    Tokens,
}

impl Replicated {
    pub fn path_name(self) -> &'static str {
        match self {
            Replicated::ConfigEntries => "config-entries",
            Replicated::Policies => "policies",
            Replicated::Roles => "roles",
            Replicated::Tokens => "tokens",
        }
    }

    pub fn parse(text: &str) -> Option<Replicated> {
        [
            Replicated::ConfigEntries,
            Replicated::Policies,
            Replicated::Roles,
            Replicated::Tokens,
        ]
        .into_iter()
        .find(|kind| kind.path_name() == text)
    }
}

/// One kind's objects as the primary holds them at `index`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Batch<T> {
    pub index: u64,
    pub items: Vec<T>,
}
