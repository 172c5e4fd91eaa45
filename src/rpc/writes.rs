//! The write batcher: group commit above openraft. openraft 0.9 waits for each append's fsync
//! before it takes the next client write, so one Raft entry per HTTP write would cost one
//! fsync per write. Instead one task commits whatever writes queued while the previous entry
//! was being committed as one `Command::Batch` entry (at most 512 writes or about 1 MiB); a
//! lone write goes through on its own, so an idle server adds no latency.

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot};

use super::RpcError;
use crate::raft::{Raft, WRITE_TIMEOUT};
use crate::tasks::Tasks;
use crate::telemetry;
use crate::types::{Command, CommandResult};

/// Most writes one batch entry may carry, and roughly how many bytes.
pub(super) const MAX_BATCH_WRITES: usize = 512;
const MAX_BATCH_BYTES: u64 = 1024 * 1024;

pub type WriteOutcome = Result<(u64, CommandResult), RpcError>;

/// A write waiting for its batch, and where its outcome goes.
pub(super) struct PendingWrite {
    pub command: Command,
    pub reply: oneshot::Sender<WriteOutcome>,
}

/// `first` and whatever else is queued already, up to `MAX_BATCH_WRITES` writes or about
/// `MAX_BATCH_BYTES`, as commands and the places their outcomes go. Shared by the leader's
/// batcher and a follower's forwarder (`forward`).
pub(super) fn gather(
    first: PendingWrite,
    queue: &mut mpsc::Receiver<PendingWrite>,
) -> (Vec<Command>, Vec<oneshot::Sender<WriteOutcome>>) {
    let mut bytes = bincode::serialized_size(&first.command).unwrap_or(0);
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH_WRITES && bytes < MAX_BATCH_BYTES {
        let Ok(next) = queue.try_recv() else { break };
        bytes += bincode::serialized_size(&next.command).unwrap_or(0);
        batch.push(next);
    }
    batch
        .into_iter()
        .map(|write| (write.command, write.reply))
        .unzip()
}

/// A handle to the write batcher.
#[derive(Clone)]
pub struct Writer {
    writes: mpsc::Sender<PendingWrite>,
}

impl Writer {
    /// Starts the batcher for `raft` under `tasks`.
    pub fn start(raft: Raft, tasks: &Tasks) -> Writer {
        let (writes, queue) = mpsc::channel(4 * MAX_BATCH_WRITES);
        tasks.spawn("rpc.write_batcher", batch_writes(raft, queue));
        Writer { writes }
    }

    /// Commits `command` through Raft; returns its log index and what applying it produced.
    pub async fn write(&self, command: Command) -> WriteOutcome {
        let (reply, outcome) = oneshot::channel();
        self.writes
            .send(PendingWrite { command, reply })
            .await
            .map_err(|_| RpcError::ShutDown)?;
        tokio::time::timeout(WRITE_TIMEOUT, outcome)
            .await
            .map_err(|_| RpcError::Timeout)?
            .map_err(|_| RpcError::ShutDown)?
    }
}

/// Commits queued writes, one Raft entry at a time: everything that queued while the previous
/// entry was committing goes into the next one.
async fn batch_writes(raft: Raft, mut queue: mpsc::Receiver<PendingWrite>) {
    while let Some(first) = queue.recv().await {
        let (commands, replies) = gather(first, &mut queue);
        let started = std::time::Instant::now();
        let writes = commands.len() as u64;
        let single = writes == 1;
        let command = if single {
            commands
                .into_iter()
                .next()
                .unwrap_or(Command::Batch(Vec::new()))
        } else {
            Command::Batch(commands)
        };
        let outcome = raft
            .client_write(command)
            .await
            .map(|response| (response.log_id.index, response.data))
            .map_err(|error| match error {
                RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
                    match forward.leader_node {
                        Some(node) => RpcError::ForwardToLeader { leader: node.addr },
                        None => RpcError::NoLeader,
                    }
                }
                other => RpcError::Raft(other.to_string()),
            });
        if outcome.is_ok() {
            metrics::histogram!(telemetry::RAFT_COMMIT_TIME).record(telemetry::ms_since(started));
            metrics::counter!(telemetry::RAFT_APPLY).increment(writes);
        }
        match outcome {
            Ok((index, CommandResult::Batch(results))) if !single => {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(Ok((index, result)));
                }
            }
            Ok((index, result)) => {
                for reply in replies {
                    let _ = reply.send(Ok((index, result.clone())));
                }
            }
            Err(error) => {
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }
}
