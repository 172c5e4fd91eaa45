//! Keyring operations across the pool (Consul's `keyring -list/-install/-use/-remove`, which
//! Serf carries as internal queries): the member asked spreads a `KeyQuery`, every member
//! applies it to its own keyring and answers the asker directly (over TCP, sealed), and the
//! asker sums the answers into Consul's response: how many nodes hold each key, how many
//! answered, and what failed where.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::keyring::{KeyError, Keyring};
use crate::config::GossipTimings;

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyOp {
    List,
    Install(String),
    Use(String),
    Remove(String),
}

/// A keyring operation on its way to every member.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyQuery {
    pub id: u64,
    pub op: KeyOp,
    /// The gossip address of the member that asked, where answers go.
    pub origin: SocketAddr,
}

/// One member's answer: its keys after the operation (primary first), or what went wrong.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyAnswer {
    pub id: u64,
    pub node: String,
    pub error: Option<String>,
    pub keys: Vec<String>,
}

/// The answers summed, as Consul's keyring response counts them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeySummary {
    pub num_nodes: usize,
    pub num_resp: usize,
    pub num_err: usize,
    /// Node → what failed there.
    pub messages: BTreeMap<String, String>,
    /// Key → how many nodes hold it.
    pub keys: BTreeMap<String, usize>,
    /// Key → how many nodes use it as their primary.
    pub primary_keys: BTreeMap<String, usize>,
}

impl KeySummary {
    pub fn add(&mut self, answer: &KeyAnswer) {
        self.num_resp += 1;
        if let Some(error) = &answer.error {
            self.num_err += 1;
            self.messages.insert(answer.node.clone(), error.clone());
        }
        for key in &answer.keys {
            *self.keys.entry(key.clone()).or_default() += 1;
        }
        if let Some(primary) = answer.keys.first() {
            *self.primary_keys.entry(primary.clone()).or_default() += 1;
        }
    }
}

/// Applies `op` to this member's keyring.
pub fn apply(keyring: &mut Keyring, op: &KeyOp) -> Result<(), KeyError> {
    match op {
        KeyOp::List => Ok(()),
        KeyOp::Install(key) => keyring.install(key),
        KeyOp::Use(key) => keyring.use_key(key),
        KeyOp::Remove(key) => keyring.remove(key),
    }
}

/// How long the asker waits for answers: Serf's query timeout, 16 × ceil(log10(n + 1))
/// gossip intervals.
pub fn timeout(timings: &GossipTimings, members: usize) -> Duration {
    let scale = ((members as f64) + 1.0).log10().ceil().max(1.0);
    timings.gossip_interval.mul_f64(16.0 * scale)
}

/// A query this member asked, collecting answers until every member answered or time is up.
pub struct Pending {
    pub summary: KeySummary,
    pub deadline: Instant,
    pub reply: oneshot::Sender<KeySummary>,
}

impl Pending {
    pub fn done(&self, now: Instant) -> bool {
        self.summary.num_resp >= self.summary.num_nodes || now >= self.deadline
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_sum_to_consuls_counts() {
        let mut summary = KeySummary {
            num_nodes: 3,
            ..KeySummary::default()
        };
        let answer = |node: &str, keys: &[&str], error: Option<&str>| KeyAnswer {
            id: 1,
            node: node.into(),
            error: error.map(str::to_string),
            keys: keys.iter().map(|key| key.to_string()).collect(),
        };
        summary.add(&answer("a", &["k2", "k1"], None));
        summary.add(&answer("b", &["k1", "k2"], None));
        summary.add(&answer(
            "c",
            &["k1"],
            Some("Requested key is not in the keyring"),
        ));
        assert_eq!((summary.num_resp, summary.num_err), (3, 1));
        assert_eq!(summary.keys.get("k1"), Some(&3));
        assert_eq!(summary.keys.get("k2"), Some(&2));
        assert_eq!(summary.primary_keys.get("k1"), Some(&2));
        assert_eq!(summary.messages.len(), 1);
        assert_eq!(timeout(&GossipTimings::LAN, 4), Duration::from_millis(3200));
    }
}
