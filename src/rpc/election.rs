//! Elections with a pre-vote, which openraft 0.9 lacks: openraft's own election timer is off
//! (`RuntimeConfig::elect(false)`), and this task starts an election only once a majority of
//! the voters say they would vote.
//!
//! Without it, a server cut off from the others keeps starting elections it cannot win, each
//! at a higher term; when it comes back, its term in an answer to the leader makes the leader
//! step down, and the cluster goes through an election for nothing. With it, the cut-off
//! server asks first, hears no majority, and comes back at the term it left.
//!
//! Timing follows openraft's: a follower runs once it has heard nothing from a leader for the
//! leader lease (`election_timeout_max`) plus a random share of an election timeout; a voter
//! says yes only if it too has heard nothing from a leader for the lease (openraft refuses
//! the real vote before then anyway), is not the leader, and the candidate's log reaches as
//! far as its own. A lone voter (a one-server cluster) runs at once.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

use super::connections::CallError;
use super::server::ServerRpc;
use super::wire::{Frame, Reply, Request, CALL_PATH};
use crate::tasks::Tasks;

/// Turns openraft's own election timer off and runs `server`'s elections from now on.
pub fn start(server: &Arc<ServerRpc>, tasks: &Tasks) {
    server.raft().runtime_config().elect(false);
    tasks.spawn("rpc.elections", run(server.clone()));
}

/// Runs until the server shuts down (its leadership channel closes).
async fn run(server: Arc<ServerRpc>) {
    let raft = server.raft().clone();
    let config = raft.config();
    let lease = Duration::from_millis(config.election_timeout_max);
    let spread = config
        .election_timeout_max
        .saturating_sub(config.election_timeout_min)
        .max(1);
    let mut leadership = server.leadership();
    loop {
        let wait = match server.handover_target() {
            // The leader hands over to this server: it runs as soon as the lease lapses.
            Some((target, _)) if target == server.node_id() => lease,
            // To another: hold back until that has had its chance.
            Some((_, until)) => {
                let left = until.saturating_duration_since(std::time::Instant::now());
                match tokio::time::timeout(left, leadership.changed()).await {
                    Ok(Err(_)) => return,
                    _ => continue,
                }
            }
            None => lease + Duration::from_millis(rand::thread_rng().gen_range(0..spread)),
        };
        let quiet = Duration::from_millis(server.millis_since_leader_contact());
        let lone = server.lone_voter();
        if !lone && quiet < wait {
            // Nothing to do until the leader has been silent long enough.
            match tokio::time::timeout(wait - quiet, leadership.changed()).await {
                Ok(Err(_)) => return,
                _ => continue,
            }
        }
        if !server.is_leader() && !lone {
            server.note_leader_silent();
        }
        if server.is_leader() || !server.is_voter() {
            if leadership.changed().await.is_err() {
                return;
            }
            continue;
        }
        // A leader elected while the pre-vote was out (another follower's) has reached this
        // server by now if it is to: then there is nothing to run for.
        let still_silent = || Duration::from_millis(server.millis_since_leader_contact()) >= lease;
        if lone || (majority_would_vote(&server).await && still_silent()) {
            tracing::debug!("a majority would vote for this server; starting an election");
            if raft.trigger().elect().await.is_err() {
                return;
            }
        }
        // Give the election (or the next leader's first message) time before looking again.
        if let Ok(Err(_)) = tokio::time::timeout(lease, leadership.changed()).await {
            return;
        }
    }
}

/// Asks every other voter whether it would vote for this server now; true when they and this
/// server make a majority of the voters.
async fn majority_would_vote(server: &ServerRpc) -> bool {
    let (voters, others) = server.voter_addresses();
    let needed = voters / 2 + 1;
    let request = Frame::encode(&Request::PreVote {
        candidate: server.node_id(),
        last_log_index: server.last_log_index(),
    });
    let timeout = Duration::from_millis(server.raft().config().election_timeout_min);
    let asks = others.into_iter().map(|address| {
        let request = request.clone();
        async move {
            let answer = server
                .connections()
                .unary(address, CALL_PATH, request, timeout, false)
                .await;
            match answer.map(|frame| frame.decode::<Reply>()) {
                Ok(Ok(Reply::PreVote(granted))) => granted,
                Ok(_) | Err(CallError::Connect(_)) | Err(CallError::Status(_)) => false,
            }
        }
    });
    let granted = futures::future::join_all(asks)
        .await
        .into_iter()
        .filter(|granted| *granted)
        .count();
    granted + 1 >= needed
}
