//! Messages spread through the pool beside foca's own member updates (foca's custom
//! broadcasts): a leave intent, Serf's `messageLeave`, so that a member that said goodbye is
//! `left`, not `failed`, and the leader deregisters it instead of keeping it critical; and
//! user events (`consul event`), Serf's `messageUserEvent`, with their Lamport time; and
//! keyring queries (`keyops`).
//!
//! foca frames and retransmits the items; this handler decides which are news (each intent is
//! spread once per member that hears it) and hands them to the pool's task through `Heard`,
//! since foca owns the handler.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use foca::{BroadcastHandler, Invalidates};
use serde::{Deserialize, Serialize};

use super::identity::NodeIdentity;

/// How many intents are remembered to drop repeats; far more than can be in flight at once.
const REMEMBERED: usize = 1024;

/// A member leaves (itself, or forced by an operator for a failed member).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LeaveIntent {
    pub name: String,
    /// The incarnation that leaves: a later start of the same node is not affected.
    pub started: u64,
    /// Erase the member from the table at once (`force-leave -prune`).
    pub prune: bool,
}

/// A user event as Consul's agent gossips it: the filters travel with it and each agent
/// decides for itself whether it applies.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UserEvent {
    pub id: String,
    pub name: String,
    pub payload: Option<Vec<u8>>,
    pub node_filter: String,
    pub service_filter: String,
    pub tag_filter: String,
    /// Lamport time, given by the pool that fires it.
    pub ltime: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Broadcast {
    Leave(LeaveIntent),
    Event(UserEvent),
    /// A keyring operation for every member (`keyops`).
    Key(super::keyops::KeyQuery),
}

impl Broadcast {
    pub fn encode(&self) -> Vec<u8> {
        bincode::serialize(self).unwrap_or_default()
    }
}

/// The key foca keeps a broadcast under while it retransmits it: the item itself, so two
/// different items never replace each other.
pub struct Key(Broadcast);

impl Invalidates for Key {
    fn invalidates(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

/// Broadcasts received and not yet taken by the pool's task.
pub type Heard = Arc<Mutex<Vec<Broadcast>>>;

pub fn take(heard: &Heard) -> Vec<Broadcast> {
    std::mem::take(&mut *heard.lock().unwrap_or_else(PoisonError::into_inner))
}

pub struct Handler {
    seen: HashSet<Broadcast>,
    order: VecDeque<Broadcast>,
    heard: Heard,
}

impl Handler {
    pub fn new(heard: Heard) -> Handler {
        Handler {
            seen: HashSet::new(),
            order: VecDeque::new(),
            heard,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("undecodable gossip broadcast: {0}")]
pub struct BroadcastError(String);

impl BroadcastHandler<NodeIdentity> for Handler {
    type Key = Key;
    type Error = BroadcastError;

    fn receive_item(
        &mut self,
        data: &[u8],
        _sender: Option<&NodeIdentity>,
    ) -> Result<Option<Key>, BroadcastError> {
        let item: Broadcast =
            super::codec::decode_whole(data).map_err(|error| BroadcastError(error.to_string()))?;
        if !self.seen.insert(item.clone()) {
            return Ok(None);
        }
        self.order.push_back(item.clone());
        if self.order.len() > REMEMBERED {
            if let Some(oldest) = self.order.pop_front() {
                self.seen.remove(&oldest);
            }
        }
        self.heard
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(item.clone());
        Ok(Some(Key(item)))
    }
}
