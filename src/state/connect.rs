//! Config entries and the CA's state: compare-and-set writes, reads and watch topics.
//!
//! Validation of an entry happens before it is proposed (`connect::entry`); the FSM only
//! decides the compare-and-set, which must be decided here, against the applied state, to be
//! race-free.

use std::sync::Arc;

use super::Tables;
use crate::types::connect::{CaState, ConfigEntry};
use crate::types::RaftIndexes;

/// Topic of every config entry of one kind (list reads block on it).
pub fn kind_topic(kind: &str) -> String {
    format!("config/{kind}")
}

/// Topic of one config entry.
pub fn entry_topic(kind: &str, name: &str) -> String {
    format!("config/{kind}/{name}")
}

/// Topic of the CA's roots and configuration.
pub const CA_TOPIC: &str = "connect/ca";

impl Tables {
    pub fn config_entry(&self, kind: &str, name: &str) -> Option<&Arc<ConfigEntry>> {
        self.config_entries
            .get(&(kind.to_string(), name.to_string()))
    }

    /// Every entry of `kind`, ordered by name.
    pub fn config_entries_of<'a>(
        &'a self,
        kind: &'a str,
    ) -> impl Iterator<Item = &'a Arc<ConfigEntry>> + 'a {
        let start = (kind.to_string(), String::new());
        self.config_entries
            .range(start..)
            .take_while(move |((entry_kind, _), _)| entry_kind == kind)
            .map(|(_, entry)| entry)
    }

    /// Every entry of every kind, ordered by kind then name.
    pub fn config_entries(&self) -> impl Iterator<Item = &Arc<ConfigEntry>> {
        self.config_entries.values()
    }

    /// Index of the last change to any entry, deletes included.
    pub fn config_entries_index(&self) -> u64 {
        self.config_index.values().copied().max().unwrap_or(0)
    }

    /// Index of the last change to any entry of `kind`, deletes included.
    pub fn config_kind_index(&self, kind: &str) -> u64 {
        self.config_index.get(kind).copied().unwrap_or(0)
    }

    pub fn ca(&self) -> Option<&Arc<CaState>> {
        self.ca.as_ref()
    }
}

fn cas_holds(current: Option<&Arc<ConfigEntry>>, cas: Option<u64>) -> bool {
    match (cas, current) {
        (None, _) => true,
        (Some(0), None) => true,
        (Some(expected), Some(entry)) => entry.indexes.modify == expected,
        (Some(_), None) => false,
    }
}

fn touch(tables: &mut Tables, index: u64, kind: &str, name: &str, touched: &mut Vec<String>) {
    tables.config_index.insert(kind.to_string(), index);
    touched.push(kind_topic(kind));
    touched.push(entry_topic(kind, name));
}

pub(super) fn set(
    tables: &mut Tables,
    index: u64,
    entry: &ConfigEntry,
    cas: Option<u64>,
    touched: &mut Vec<String>,
) -> bool {
    let key = (entry.kind.clone(), entry.name.clone());
    let current = tables.config_entries.get(&key);
    if !cas_holds(current, cas) {
        return false;
    }
    let create = current.map_or(index, |current| current.indexes.create);
    let mut stored = entry.clone();
    stored.indexes = RaftIndexes {
        create,
        modify: index,
    };
    tables.config_entries.insert(key, Arc::new(stored));
    touch(tables, index, &entry.kind, &entry.name, touched);
    true
}

pub(super) fn delete(
    tables: &mut Tables,
    index: u64,
    kind: &str,
    name: &str,
    cas: Option<u64>,
    touched: &mut Vec<String>,
) -> bool {
    let key = (kind.to_string(), name.to_string());
    let current = tables.config_entries.get(&key);
    match (cas, current) {
        // Deleting what is not there succeeds without a change, as in Consul.
        (None, None) => return true,
        (Some(_), None) => return false,
        (Some(expected), Some(entry)) if entry.indexes.modify != expected => return false,
        _ => {}
    }
    tables.config_entries.remove(&key);
    touch(tables, index, kind, name, touched);
    true
}

pub(super) fn set_ca(
    tables: &mut Tables,
    index: u64,
    state: &CaState,
    expected_index: u64,
    touched: &mut Vec<String>,
) -> bool {
    let current_index = tables.ca.as_ref().map_or(0, |ca| ca.indexes.modify);
    if current_index != expected_index {
        return false;
    }
    let mut state = state.clone();
    state.indexes = RaftIndexes {
        create: tables.ca.as_ref().map_or(index, |ca| ca.indexes.create),
        modify: index,
    };
    for root in &mut state.roots {
        if root.indexes.create == 0 {
            root.indexes.create = index;
        }
        root.indexes.modify = index;
    }
    tables.ca = Some(Arc::new(state));
    touched.push(CA_TOPIC.into());
    true
}
