//! The progress marker: a tiny file beside the Raft database recording the highest log index
//! known to be durable. sled recovers from a damaged file by keeping what it can read, which
//! would silently drop acknowledged writes; comparing the recovered log with this marker at
//! start-up turns that into a refusal to start.
//!
//! The marker is written only after the flush that made the index durable, so it is never
//! ahead of the database; after a power loss it may lag behind, which only weakens the check.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Mixed into the stored index so that garbage is not read as a valid marker.
const MAGIC: u64 = 0x636f_6e63_6f72_6431;

pub struct ProgressMarker {
    file: Mutex<File>,
    path: PathBuf,
}

impl ProgressMarker {
    /// Opens the marker, returning it with the index it records (0 when new).
    pub(super) fn open(path: &Path) -> Result<(ProgressMarker, u64), String> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|error| format!("cannot open {}: {error}", path.display()))?;
        let mut bytes = [0u8; 16];
        let length = file
            .metadata()
            .map_err(|error| format!("cannot read {}: {error}", path.display()))?
            .len();
        let recorded = match length {
            0 => 0,
            16 => {
                file.read_exact_at(&mut bytes, 0)
                    .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
                let index = u64::from_be_bytes(bytes[..8].try_into().unwrap_or_default());
                let check = u64::from_be_bytes(bytes[8..].try_into().unwrap_or_default());
                if index ^ MAGIC != check {
                    return Err(format!("{} is corrupt", path.display()));
                }
                index
            }
            other => return Err(format!("{} is corrupt ({other} bytes)", path.display())),
        };
        let marker = ProgressMarker {
            file: Mutex::new(file),
            path: path.to_path_buf(),
        };
        Ok((marker, recorded))
    }

    /// Records `index` as durable. Failure is logged, not fatal: the marker is a safety check,
    /// not part of the data.
    pub fn record(&self, index: u64) {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&index.to_be_bytes());
        bytes[8..].copy_from_slice(&(index ^ MAGIC).to_be_bytes());
        let file = self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(error) = file.write_all_at(&bytes, 0) {
            tracing::warn!(path = %self.path.display(), %error, "cannot update the Raft progress marker");
        }
    }
}
