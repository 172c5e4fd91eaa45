//! A cluster of one in memory, for unit tests of the code above the seam (handlers, DNS,
//! proxycfg) without Raft: writes apply straight to a state store at increasing indexes, and
//! leadership is whatever the test sets. It exists only under `cfg(test)`; the real agent and
//! the integration tests always run Raft.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

use super::{LeaderContact, Leadership};
use crate::state::Store;
use crate::types::{Command, CommandResult};

pub struct MemoryCluster {
    pub store: Arc<Store>,
    index: AtomicU64,
    /// Leadership as published; tests change it with `set_leader`.
    leadership: watch::Sender<Leadership>,
    contact: Mutex<LeaderContact>,
}

impl MemoryCluster {
    pub fn new() -> Arc<MemoryCluster> {
        Arc::new(MemoryCluster {
            store: Arc::new(Store::new()),
            index: AtomicU64::new(0),
            leadership: watch::Sender::new(Leadership {
                is_leader: true,
                leader: Some(1),
                leader_address: "127.0.0.1:8300".into(),
                term: 1,
            }),
            contact: Mutex::new(LeaderContact {
                known_leader: true,
                last_contact_ms: 0,
            }),
        })
    }

    /// Applies `command` at the next index, as a committed Raft entry would be.
    pub fn apply(&self, command: &Command) -> (u64, CommandResult) {
        let index = self.index.fetch_add(1, Ordering::AcqRel) + 1;
        let mut results = self.store.apply_batch([(index, Some(command))]);
        (index, results.pop().unwrap_or(CommandResult::Done))
    }

    /// What reads learn about the leader from now on.
    pub fn set_contact(&self, contact: LeaderContact) {
        *self.contact.lock().unwrap_or_else(PoisonError::into_inner) = contact;
        self.leadership.send_modify(|leadership| {
            leadership.is_leader = contact.known_leader;
            leadership.leader = contact.known_leader.then_some(1);
        });
    }

    pub fn leader_contact(&self) -> LeaderContact {
        *self.contact.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn leadership(&self) -> watch::Receiver<Leadership> {
        self.leadership.subscribe()
    }
}
