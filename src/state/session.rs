//! The sessions table and what sessions do to KV locks: creating one checks its node and
//! checks; destroying or invalidating one releases (or deletes) every key it locked and records
//! the release so the store can apply the session's lock-delay.

use std::sync::Arc;

use super::kv;
use super::Tables;
use crate::types::session::{Session, SessionBehavior};
use crate::types::{ApplyError, HealthStatus, RaftIndexes};

pub const SESSIONS_TOPIC: &str = "sessions";

impl Tables {
    pub fn session(&self, id: &str) -> Option<&Session> {
        self.sessions.get(id).map(|session| &**session)
    }

    pub fn sessions(&self) -> impl Iterator<Item = &Session> {
        self.sessions.values().map(|session| &**session)
    }
}

/// Why `session` cannot be (or stay) valid, if it cannot: its node must be registered and every
/// check it is bound to must exist and not be critical.
fn invalid_reason(tables: &Tables, session: &Session) -> Option<ApplyError> {
    if tables.node(&session.node).is_none() {
        return Some(ApplyError::SessionNodeMissing(session.node.clone()));
    }
    for check_id in session.node_checks.iter().chain(&session.service_checks) {
        match tables
            .node_checks(&session.node)
            .find(|c| &c.check_id == check_id)
        {
            None => return Some(ApplyError::SessionCheckMissing(check_id.clone())),
            Some(check) if check.status == HealthStatus::Critical => {
                return Some(ApplyError::SessionCheckCritical(check_id.clone()))
            }
            Some(_) => {}
        }
    }
    None
}

pub(super) fn create(
    tables: &mut Tables,
    index: u64,
    session: &Session,
    touched: &mut Vec<String>,
) -> Result<(), ApplyError> {
    if tables.sessions.contains_key(session.id.as_str()) {
        return Err(ApplyError::SessionExists(session.id.clone()));
    }
    if let Some(reason) = invalid_reason(tables, session) {
        return Err(reason);
    }
    let mut stored = session.clone();
    stored.indexes = RaftIndexes {
        create: index,
        modify: index,
    };
    tables.sessions.insert(session.id.clone(), Arc::new(stored));
    tables.table_index.sessions = index;
    touched.push(SESSIONS_TOPIC.into());
    Ok(())
}

/// Destroys a session and releases or deletes every key it holds.
pub(super) fn destroy(tables: &mut Tables, index: u64, id: &str, touched: &mut Vec<String>) {
    let Some(session) = tables.sessions.remove(id) else {
        return;
    };
    tables.table_index.sessions = index;
    touched.push(SESSIONS_TOPIC.into());
    super::query::forget_session(tables, index, id, touched);
    let held: Vec<std::sync::Arc<str>> = tables
        .kv_list("")
        .filter(|entry| entry.session == id)
        .map(|entry| entry.key.clone())
        .collect();
    for key in held {
        match session.behavior {
            SessionBehavior::Release => kv::release_lock(tables, index, &key, touched),
            SessionBehavior::Delete => kv::delete_key(tables, index, &key, touched),
        }
        tables
            .released_locks
            .push((key.to_string(), session.lock_delay));
    }
}

/// Destroys every session whose node or bound checks no longer allow it; run after catalog
/// changes.
pub(super) fn invalidate_unhealthy(tables: &mut Tables, index: u64, touched: &mut Vec<String>) {
    let doomed: Vec<String> = tables
        .sessions()
        .filter(|session| invalid_reason(tables, session).is_some())
        .map(|session| session.id.clone())
        .collect();
    for id in doomed {
        destroy(tables, index, &id, touched);
    }
}
