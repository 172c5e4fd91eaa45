//! A follower's writes go to the leader in batches: every write that arrives while earlier
//! ones are on their way joins the next `WriteBatch` call (as many as one Raft entry of the
//! leader's batcher takes, `writes::gather`), so a busy follower sends a few calls per commit instead of one per
//! write, and the leader's write batcher still commits them together. A lone write goes at
//! once. Up to `IN_FLIGHT` batches are on their way at a time.
//!
//! Each write gets its own outcome; a batch that could not be delivered fails every write in
//! it, as a single forwarded write would fail (never re-sent once it may have arrived).

use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::writes::{gather, PendingWrite, WriteOutcome, MAX_BATCH_WRITES};
use super::{mismatched, RpcError};
use crate::tasks::Tasks;
use crate::types::Command;

/// Delivers one batch to the leader and returns each write's outcome, in order (the server
/// supplies it, so this module needs nothing of the server's).
pub type SendBatch =
    Arc<dyn Fn(Vec<Command>) -> BoxFuture<'static, Vec<WriteOutcome>> + Send + Sync>;

const IN_FLIGHT: usize = 4;

#[derive(Clone)]
pub struct Forwarder {
    queue: mpsc::Sender<PendingWrite>,
}

impl Forwarder {
    /// Starts forwarding batches through `send`.
    pub fn start(send: SendBatch, tasks: &Tasks) -> Forwarder {
        let (queue, pending) = mpsc::channel(4 * MAX_BATCH_WRITES);
        tasks.spawn("rpc.forward_writes", forward(send, pending, tasks.clone()));
        Forwarder { queue }
    }

    /// Sends `command` to the leader with whatever else is waiting; its outcome there.
    pub async fn write(&self, command: Command) -> WriteOutcome {
        let (reply, outcome) = oneshot::channel();
        self.queue
            .send(PendingWrite { command, reply })
            .await
            .map_err(|_| RpcError::ShutDown)?;
        outcome.await.map_err(|_| RpcError::ShutDown)?
    }
}

async fn forward(send: SendBatch, mut queue: mpsc::Receiver<PendingWrite>, tasks: Tasks) {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        // Wait for room first, so writes gather in the queue while every slot is busy.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = queue.recv().await else {
            return;
        };
        let (commands, replies) = gather(first, &mut queue);
        let send = send.clone();
        tasks.spawn("rpc.forward_batch", async move {
            let count = commands.len();
            let mut outcomes = send(commands).await;
            if outcomes.len() != count {
                outcomes = vec![Err(mismatched()); count];
            }
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(outcome);
            }
            drop(permit);
        });
    }
}
