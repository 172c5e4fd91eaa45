//! Session TTL timers, run by the leader: a session with a TTL is destroyed (through Raft) when
//! it goes twice its TTL without a renewal, Consul's grace. Timers live in the leader's memory;
//! a new leader starts every timer afresh, as Consul does.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::ServerRpc;
use crate::types::Command;

/// A session may go this many TTLs without a renewal.
const TTL_MULTIPLIER: u32 = 2;
const TICK: Duration = Duration::from_millis(200);

#[derive(Default)]
pub struct SessionTimers {
    deadlines: Mutex<HashMap<String, Instant>>,
}

impl SessionTimers {
    /// Restarts a session's timer (on renew; a new session's timer starts when the leader's
    /// next tick sees it).
    pub fn renew(&self, id: &str, ttl: Duration) {
        self.deadlines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.to_string(), Instant::now() + ttl * TTL_MULTIPLIER);
    }

    /// Runs until `shutdown`: while `server` leads, destroys sessions whose timer ran out.
    pub async fn run(&self, server: &ServerRpc, shutdown: CancellationToken) {
        let mut leadership = server.leadership();
        let mut tick = tokio::time::interval(TICK);
        loop {
            if !leadership.borrow_and_update().is_leader {
                // A new leader starts every timer afresh, as Consul does.
                self.deadlines
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clear();
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    changed = leadership.changed() => if changed.is_err() { return },
                }
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
                changed = leadership.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    continue;
                }
            }
            let tables = server.store().snapshot();
            let now = Instant::now();
            let expired: Vec<String> = {
                let mut deadlines = self
                    .deadlines
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                deadlines.retain(|id, _| tables.session(id).is_some());
                tables
                    .sessions()
                    .filter_map(|session| {
                        let ttl = session.ttl?;
                        let deadline = *deadlines
                            .entry(session.id.clone())
                            .or_insert(now + ttl * TTL_MULTIPLIER);
                        (deadline <= now).then(|| session.id.clone())
                    })
                    .collect()
            };
            for id in expired {
                tracing::info!(session = %id, "session TTL expired; invalidating");
                match server
                    .write_as_leader(Command::SessionDestroy { id: id.clone() })
                    .await
                {
                    Ok(_) => {
                        self.deadlines
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .remove(&id);
                    }
                    Err(error) => {
                        tracing::warn!(%error, session = %id, "cannot invalidate session")
                    }
                }
            }
        }
    }
}
