//! Restoring a snapshot through the log: the whole state in one `Command::Restore` (logs
//! written before pieces existed), or in pieces (`RestoreChunk`) staged in the tables until
//! `RestoreCommit` replaces every table with them.
//!
//! The staged pieces are replicated state: every server stages the same bytes at the same
//! indexes, and they are encoded in snapshots (format 7), so a server that installs a
//! snapshot taken halfway through a restore commits it like the others. A restored state
//! never carries a staged restore of its own: an operator's archive saved mid-restore
//! restores without the unfinished one.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Store, Tables};
use crate::types::{ApplyError, CommandResult};

/// A restore whose pieces are arriving. Pieces are shared, so the O(1) copy of the tables
/// each batch makes copies pointers, not bytes.
#[derive(Clone, Debug, Default)]
pub(super) struct StagedRestore {
    id: String,
    pieces: Vec<Arc<[u8]>>,
    len: u64,
}

/// How a staged restore is encoded in a snapshot: its id and its bytes so far.
#[derive(Serialize, Deserialize)]
pub(super) struct StagedSection {
    id: String,
    #[serde(with = "crate::types::bytes")]
    bytes: Vec<u8>,
}

impl StagedRestore {
    pub(super) fn section(&self) -> StagedSection {
        StagedSection {
            id: self.id.clone(),
            bytes: self.pieces.concat(),
        }
    }

    pub(super) fn from_section(section: StagedSection) -> StagedRestore {
        StagedRestore {
            id: section.id,
            len: section.bytes.len() as u64,
            pieces: vec![Arc::from(section.bytes)],
        }
    }
}

impl Tables {
    /// Stages one piece; a piece at offset 0 starts restore `id` afresh.
    pub(super) fn stage_restore(&mut self, id: &str, offset: u64, bytes: &[u8]) -> CommandResult {
        if offset == 0 {
            self.staged_restore = Some(Arc::new(StagedRestore {
                id: id.to_string(),
                ..StagedRestore::default()
            }));
        }
        let staged = self
            .staged_restore
            .as_mut()
            .filter(|staged| staged.id == id && staged.len == offset);
        let Some(staged) = staged else {
            return CommandResult::Error(ApplyError::RestoreInterrupted(format!(
                "restore {id} was interrupted by another restore (piece at byte {offset})"
            )));
        };
        let staged = Arc::make_mut(staged);
        staged.pieces.push(Arc::from(bytes));
        staged.len += bytes.len() as u64;
        CommandResult::Done
    }

    /// Replaces every table with restore `id` if all `len` of its bytes are staged.
    pub(super) fn commit_restore(&mut self, index: u64, id: &str, len: u64) -> CommandResult {
        let staged = self.staged_restore.take();
        match staged.filter(|staged| staged.id == id && staged.len == len) {
            Some(staged) => self.replace_with(index, &staged.pieces.concat()),
            None => CommandResult::Error(ApplyError::RestoreInterrupted(format!(
                "restore {id} was interrupted by another restore before all {len} bytes arrived"
            ))),
        }
    }

    /// Replaces every table with a snapshot's state (`Store::encode` bytes).
    pub(super) fn replace_with(&mut self, index: u64, bytes: &[u8]) -> CommandResult {
        match Store::decode(bytes) {
            Ok(mut restored) => {
                restored.rebuild_derived_indexes();
                restored.staged_restore = None;
                restored.values = self.values.fresh();
                restored.move_values_to_fresh_file();
                // Indexes inside may be another cluster's; the store's own position in the
                // log never goes back.
                restored.last_index = restored.last_index.max(index);
                restored.restored = true;
                *self = restored;
                CommandResult::Done
            }
            Err(error) => CommandResult::Error(ApplyError::SnapshotUnreadable(error.0)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Command, KvOp};

    fn set(key: &str, value: &str) -> Command {
        Command::Kv(KvOp::Set {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            flags: 0,
        })
    }

    fn pieces(id: &str, bytes: &[u8], size: usize) -> Vec<Command> {
        bytes
            .chunks(size)
            .enumerate()
            .map(|(n, piece)| Command::RestoreChunk {
                id: id.into(),
                offset: (n * size) as u64,
                bytes: piece.to_vec(),
            })
            .collect()
    }

    fn apply(store: &Store, index: u64, command: &Command) -> CommandResult {
        store.apply_batch([(index, Some(command))]).remove(0)
    }

    /// A saved state holding `saved = 1`, and a store holding `key = value` to restore it into.
    fn saved_state_and_a_store(key: &str, value: &str) -> (Vec<u8>, Store) {
        let source = Store::new();
        apply(&source, 1, &set("saved", "1"));
        let state = Store::encode(&source.snapshot()).unwrap();
        let store = Store::new();
        apply(&store, 1, &set(key, value));
        (state, store)
    }

    #[test]
    fn pieces_replace_the_tables_at_the_commit_and_survive_a_snapshot_between() {
        let (state, store) = saved_state_and_a_store("later", "2");
        let mut index = 2;
        let pieces = pieces("r1", &state, 7);
        let (first, rest) = pieces.split_at(pieces.len() / 2);
        for piece in first {
            assert_eq!(apply(&store, index, piece), CommandResult::Done);
            index += 1;
        }
        assert!(
            store.snapshot().kv_get("later").is_some(),
            "nothing changes before the commit"
        );

        // A server that installs a snapshot taken here finishes the restore like the others.
        let installed = Store::new();
        installed
            .restore(&Store::encode(&store.snapshot()).unwrap())
            .unwrap();
        let commit = Command::RestoreCommit {
            id: "r1".into(),
            len: state.len() as u64,
        };
        for replica in [&store, &installed] {
            let mut index = index;
            for piece in rest {
                assert_eq!(apply(replica, index, piece), CommandResult::Done);
                index += 1;
            }
            assert_eq!(apply(replica, index, &commit), CommandResult::Done);
            let tables = replica.snapshot();
            assert_eq!(tables.kv_get("saved").unwrap().value, b"1");
            assert!(tables.kv_get("later").is_none());
            assert!(tables.staged_restore.is_none());
            assert_eq!(tables.last_index(), index);
        }
    }

    #[test]
    fn a_second_restore_interrupts_the_first_and_a_short_commit_changes_nothing() {
        let (state, store) = saved_state_and_a_store("kept", "k");

        let first = pieces("r1", &state, 16);
        apply(&store, 2, &first[0]);
        apply(&store, 3, &pieces("r2", &state, 16)[0]);
        assert!(matches!(
            apply(&store, 4, &first[1]),
            CommandResult::Error(ApplyError::RestoreInterrupted(_))
        ));
        let short = Command::RestoreCommit {
            id: "r2".into(),
            len: state.len() as u64,
        };
        assert!(matches!(
            apply(&store, 5, &short),
            CommandResult::Error(ApplyError::RestoreInterrupted(_))
        ));
        let tables = store.snapshot();
        assert_eq!(tables.kv_get("kept").unwrap().value, b"k");
        assert!(tables.staged_restore.is_none());
    }
}
