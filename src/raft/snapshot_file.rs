//! Snapshots as files: `raft/snapshots/current.snap`, written to a temporary file, fsynced,
//! renamed into place and the directory fsynced, so a snapshot is either wholly there or the
//! previous one is. A CRC over the file catches damage on read.
//!
//! Snapshots live outside sled because sled stores large values in blob files that it never
//! fsyncs, and the Raft log is purged behind a snapshot: a snapshot that did not reach the disk
//! would lose every write it covered.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

const MAGIC: &[u8; 8] = b"CNCDSNP1";
const FILE_NAME: &str = "current.snap";

pub struct SnapshotFiles {
    dir: PathBuf,
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl SnapshotFiles {
    pub(super) fn open(dir: &Path) -> Result<SnapshotFiles, String> {
        std::fs::create_dir_all(dir)
            .map_err(|error| format!("cannot create {}: {error}", dir.display()))?;
        Ok(SnapshotFiles {
            dir: dir.to_path_buf(),
        })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    /// Writes `meta` and `data` durably, replacing the previous snapshot atomically.
    pub fn write<M: Serialize>(&self, meta: &M, data: &[u8]) -> std::io::Result<()> {
        let meta = bincode::serialize(meta).map_err(std::io::Error::other)?;
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&meta);
        hasher.update(data);
        let temporary = self.dir.join(format!("{FILE_NAME}.tmp"));
        let mut file = File::create(&temporary)?;
        file.write_all(MAGIC)?;
        file.write_all(&(meta.len() as u64).to_be_bytes())?;
        file.write_all(&meta)?;
        file.write_all(data)?;
        file.write_all(&hasher.finalize().to_be_bytes())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&temporary, self.path())?;
        fsync_dir(&self.dir)
    }

    /// Reads the current snapshot; `Ok(None)` when there is none, an error naming the file when
    /// it is damaged.
    pub(super) fn read<M: DeserializeOwned>(&self) -> Result<Option<(M, Vec<u8>)>, String> {
        let path = self.path();
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(format!("cannot read {}: {error}", path.display())),
        };
        let corrupt = |what: &str| format!("{} is corrupt: {what}", path.display());
        if bytes.len() < MAGIC.len() + 8 + 4 || &bytes[..MAGIC.len()] != MAGIC {
            return Err(corrupt("bad header"));
        }
        let (body, trailer) = bytes.split_at(bytes.len() - 4);
        let mut length = [0u8; 8];
        length.copy_from_slice(&body[MAGIC.len()..MAGIC.len() + 8]);
        let meta_len = usize::try_from(u64::from_be_bytes(length)).unwrap_or(usize::MAX);
        let meta_start = MAGIC.len() + 8;
        if meta_len > body.len() - meta_start {
            return Err(corrupt("metadata length past the end"));
        }
        let (meta, data) = body[meta_start..].split_at(meta_len);
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(meta);
        hasher.update(data);
        let mut stored = [0u8; 4];
        stored.copy_from_slice(trailer);
        if hasher.finalize() != u32::from_be_bytes(stored) {
            return Err(corrupt("checksum mismatch"));
        }
        let meta = bincode::deserialize(meta).map_err(|error| corrupt(&error.to_string()))?;
        Ok(Some((meta, data.to_vec())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_detects_damage() {
        let dir = tempfile::tempdir().unwrap();
        let files = SnapshotFiles::open(dir.path()).unwrap();
        assert!(files.read::<String>().unwrap().is_none());
        files.write(&"meta".to_string(), b"state bytes").unwrap();
        let (meta, data) = files.read::<String>().unwrap().unwrap();
        assert_eq!(
            (meta.as_str(), data.as_slice()),
            ("meta", &b"state bytes"[..])
        );

        files.write(&"second".to_string(), b"newer").unwrap();
        assert_eq!(files.read::<String>().unwrap().unwrap().0, "second");

        let mut bytes = std::fs::read(files.path()).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(files.path(), &bytes).unwrap();
        let error = files.read::<String>().unwrap_err();
        assert!(
            error.contains("current.snap") && error.contains("corrupt"),
            "{error}"
        );
    }
}
