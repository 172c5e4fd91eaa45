//! Runs openraft's own storage test suite against the log store (WAL entries, sled metadata)
//! and the file-snapshot state machine, each
//! case on a fresh database in its own temporary directory.

use std::sync::Arc;

use openraft::testing::{StoreBuilder, Suite};

use super::{open_storage, LogStore, StateMachine, StorageError, TypeConfig};
use crate::state::Store;

struct DiskBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for DiskBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
        let setup_error = |error: String| -> StorageError {
            openraft::StorageIOError::write(&std::io::Error::other(error)).into()
        };
        let dir = tempfile::tempdir().map_err(|error| setup_error(error.to_string()))?;
        let storage = open_storage(dir.path(), Arc::new(Store::new()))
            .await
            .map_err(|error| setup_error(error.to_string()))?;
        Ok((dir, storage.log_store, storage.state_machine))
    }
}

#[test]
fn disk_storage_passes_openraft_suite() -> Result<(), StorageError> {
    Suite::test_all(DiskBuilder)
}
