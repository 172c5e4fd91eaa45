//! A follower's writes go to the leader in batches: every write that arrives while earlier
//! ones are on their way joins the next `WriteBatch` call (at most `MAX_BATCH_WRITES` writes or
//! about `MAX_BATCH_BYTES`), so a busy follower sends a few calls per commit instead of one per
//! write, and the leader's write batcher still commits them together. A lone write goes at
//! once. Up to `IN_FLIGHT` batches are on their way at a time.
//!
//! Each write gets its own outcome; a batch that could not be delivered fails every write in
//! it, as a single forwarded write would fail (never re-sent once it may have arrived).

use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::writes::WriteOutcome;
use super::{mismatched, RpcError};
use crate::tasks::Tasks;
use crate::types::Command;

/// Delivers one batch to the leader and returns each write's outcome, in order (the server
/// supplies it, so this module needs nothing of the server's).
pub type SendBatch =
    Arc<dyn Fn(Vec<Command>) -> BoxFuture<'static, Vec<WriteOutcome>> + Send + Sync>;

const MAX_BATCH_WRITES: usize = 512;
const MAX_BATCH_BYTES: u64 = 1024 * 1024;
const IN_FLIGHT: usize = 4;

struct Pending {
    command: Command,
    reply: oneshot::Sender<WriteOutcome>,
}

#[derive(Clone)]
pub struct Forwarder {
    queue: mpsc::Sender<Pending>,
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
            .send(Pending { command, reply })
            .await
            .map_err(|_| RpcError::ShutDown)?;
        outcome.await.map_err(|_| RpcError::ShutDown)?
    }
}

async fn forward(send: SendBatch, mut queue: mpsc::Receiver<Pending>, tasks: Tasks) {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        // Wait for room first, so writes gather in the queue while every slot is busy.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = queue.recv().await else {
            return;
        };
        let mut bytes = bincode::serialized_size(&first.command).unwrap_or(0);
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_WRITES && bytes < MAX_BATCH_BYTES {
            let Ok(next) = queue.try_recv() else { break };
            bytes += bincode::serialized_size(&next.command).unwrap_or(0);
            batch.push(next);
        }
        let send = send.clone();
        tasks.spawn("rpc.forward_batch", async move {
            let (commands, replies): (Vec<Command>, Vec<_>) = batch
                .into_iter()
                .map(|pending| (pending.command, pending.reply))
                .unzip();
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
