//! Leadership transfer (`operator raft transfer-leader`), emulated on openraft 0.9, which has
//! no transfer of its own.
//!
//! Followers refuse to elect anyone while the leader's vote lease holds, and every heartbeat,
//! replicated write or confirmation round renews it. So the leader hands over by going quiet:
//! it closes the `Handover` gate (new writes and confirmation rounds wait at it), tells every
//! other voter which server is to take over (`Request::Handover`: the others then hold their
//! own elections back and give their pre-vote to the target alone, see `election`), stops
//! its heartbeats and lets the target catch up. Once the lease lapses the target runs and
//! wins, its log being the longest. The gate then opens and what waited at it finds the new
//! leader. If no new leader appears within a few leases, heartbeats resume and the old leader
//! carries on.
//!
//! Reads stay correct throughout: the old leader's own read lease (the shortest election
//! timeout) ends before the followers' vote lease (the longest), and once it has ended a
//! default read needs a confirmation round, which waits at the gate.

use tokio::sync::watch;

/// Whether a handover is under way; requests that would touch Raft on the leader wait while
/// it is.
#[derive(Clone)]
pub struct Handover {
    state: watch::Sender<bool>,
}

impl Default for Handover {
    fn default() -> Self {
        Handover {
            state: watch::channel(false).0,
        }
    }
}

impl Handover {
    pub fn in_progress(&self) -> bool {
        *self.state.borrow()
    }

    /// Waits until no handover is under way.
    pub async fn passed(&self) {
        let mut state = self.state.subscribe();
        // The sender lives in `self`, so the channel cannot close while this waits.
        let _ = state.wait_for(|busy| !*busy).await;
    }

    /// Closes the gate until the returned guard is dropped.
    pub fn begin(&self) -> Option<HandoverGuard> {
        let began = self
            .state
            .send_if_modified(|busy| !std::mem::replace(busy, true));
        began.then(|| HandoverGuard {
            state: self.state.clone(),
        })
    }
}

pub struct HandoverGuard {
    state: watch::Sender<bool>,
}

impl Drop for HandoverGuard {
    fn drop(&mut self) {
        self.state.send_replace(false);
    }
}
