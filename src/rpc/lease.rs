//! The leader's confirmations of its leadership, grouped, and the lease they give it.
//!
//! A consistent read must know this server still leads before it reads: a quorum has to
//! answer a heartbeat sent after the read arrived (openraft's `ensure_linearizable`). One round
//! per read would cost a quorum round trip each; instead one task runs rounds back to back and
//! every read that arrived before a round started is answered by that round (group
//! confirmation, as the write batcher groups commits). A read that arrives while a round is in
//! flight waits for the next one, so its confirmation always postdates it.
//!
//! Every successful round also renews the lease: for the shortest election timeout after a
//! round began, followers refuse to elect anyone else (openraft's vote lease is longer), so a
//! default-consistency read is answered without a round. A task renews it every two
//! heartbeats while this server leads; a leader cut off from its quorum lets it lapse.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, RaftError};
use tokio::sync::{mpsc, oneshot, watch};

use super::handover::Handover;
use super::{Leadership, RpcError, RPC_HOLD_TIMEOUT};
use crate::raft::Raft;
use crate::tasks::Tasks;

type Waiter = oneshot::Sender<Result<(), RpcError>>;

#[derive(Clone)]
pub struct Lease {
    waiters: mpsc::UnboundedSender<Waiter>,
    started: Instant,
    /// When the last successful round began (ms after `started`; 0 never).
    confirmed_ms: Arc<AtomicU64>,
    /// The lease's length: the shortest election timeout.
    length_ms: u64,
}

impl Lease {
    /// Starts the confirmation rounds and the lease keeper for `raft`.
    /// Rounds wait while a leadership `handover` is under way: they would renew the
    /// followers' vote lease the handover waits out.
    pub fn start(
        raft: Raft,
        leadership: watch::Receiver<Leadership>,
        handover: Handover,
        tasks: &Tasks,
    ) -> Lease {
        let (waiters, queue) = mpsc::unbounded_channel();
        let lease = Lease {
            waiters,
            started: Instant::now(),
            confirmed_ms: Arc::new(AtomicU64::new(0)),
            length_ms: raft.config().election_timeout_min,
        };
        let every = Duration::from_millis(2 * raft.config().heartbeat_interval);
        tasks.spawn(
            "rpc.confirm_rounds",
            lease.clone().rounds(raft, queue, handover),
        );
        tasks.spawn("rpc.leader_lease", lease.clone().keep(leadership, every));
        lease
    }

    /// Waits for a quorum to confirm this server leads, in a round that began after the call.
    pub async fn confirm(&self) -> Result<(), RpcError> {
        let (reply, answer) = oneshot::channel();
        self.waiters.send(reply).map_err(|_| RpcError::ShutDown)?;
        answer.await.map_err(|_| RpcError::ShutDown)?
    }

    /// How long ago the last round began, once that is beyond the lease; `None` while the
    /// lease holds.
    pub fn age_ms(&self) -> Option<u64> {
        let confirmed = self.confirmed_ms.load(Ordering::Relaxed);
        let age = self.now_ms().saturating_sub(confirmed);
        (confirmed == 0 || age > self.length_ms).then_some(age)
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Runs rounds back to back while reads wait: each answers every read queued before it.
    async fn rounds(
        self,
        raft: Raft,
        mut queue: mpsc::UnboundedReceiver<Waiter>,
        handover: Handover,
    ) {
        while let Some(first) = queue.recv().await {
            handover.passed().await;
            let mut waiting = vec![first];
            while let Ok(next) = queue.try_recv() {
                waiting.push(next);
            }
            let began = self.now_ms().max(1);
            let outcome =
                match tokio::time::timeout(RPC_HOLD_TIMEOUT, raft.ensure_linearizable()).await {
                    // A leader cut off from its quorum never hears back.
                    Err(_) => Err(RpcError::NoLeader),
                    Ok(Ok(_)) => {
                        self.confirmed_ms.fetch_max(began, Ordering::Relaxed);
                        Ok(())
                    }
                    Ok(Err(error)) => Err(refusal(error)),
                };
            for waiter in waiting {
                let _ = waiter.send(outcome.clone());
            }
        }
    }

    /// Renews the lease every `every` while this server leads; forgets it otherwise.
    async fn keep(self, mut leadership: watch::Receiver<Leadership>, every: Duration) {
        loop {
            if !leadership.borrow_and_update().is_leader {
                self.confirmed_ms.store(0, Ordering::Relaxed);
                if leadership.changed().await.is_err() {
                    return;
                }
                continue;
            }
            let _ = self.confirm().await;
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                changed = leadership.changed() => if changed.is_err() { return },
            }
        }
    }
}

fn refusal(error: RaftError<u64, CheckIsLeaderError<u64, openraft::BasicNode>>) -> RpcError {
    match error {
        RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward)) => {
            RpcError::ForwardToLeader {
                leader: forward
                    .leader_node
                    .map(|node| node.addr)
                    .unwrap_or_default(),
            }
        }
        RaftError::APIError(_) => RpcError::NoLeader,
        other => RpcError::Raft(other.to_string()),
    }
}
