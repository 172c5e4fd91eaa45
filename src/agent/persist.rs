//! Services and checks registered over the API survive restarts: each definition, as it was
//! sent, is kept in `<data_dir>/agent/services/` or `.../checks/` and registered again at
//! start. (Definitions from config files are not stored; the files are their record.) Files
//! are written to a temporary name and renamed, so a crash leaves the old or the new one.

use std::path::{Path, PathBuf};

use serde_json::Value;

pub(super) struct Persisted {
    root: PathBuf,
}

/// What a definition is: the directory it lives in.
#[derive(Clone, Copy)]
pub(super) enum Kind {
    Service,
    Check,
    /// The last status of a TTL check, so a restart does not reset it (as in Consul).
    TtlState,
}

impl Kind {
    fn dir(self) -> &'static str {
        match self {
            Kind::Service => "services",
            Kind::Check => "checks",
            Kind::TtlState => "check-state",
        }
    }
}

/// Ids may hold any character; file names get their hex encoding.
fn file_name(id: &str) -> String {
    let hex: String = id.bytes().map(|byte| format!("{byte:02x}")).collect();
    format!("{hex}.json")
}

impl Persisted {
    pub(super) fn new(data_dir: &Path) -> Persisted {
        Persisted {
            root: data_dir.join("agent"),
        }
    }

    fn path(&self, kind: Kind, id: &str) -> PathBuf {
        self.root.join(kind.dir()).join(file_name(id))
    }

    pub(super) fn save(&self, kind: Kind, id: &str, definition: &Value) -> Result<(), String> {
        let path = self.path(kind, id);
        let write = || -> std::io::Result<()> {
            let dir = self.root.join(kind.dir());
            std::fs::create_dir_all(&dir)?;
            let temporary = path.with_extension("tmp");
            std::fs::write(
                &temporary,
                serde_json::to_vec(definition).unwrap_or_default(),
            )?;
            std::fs::rename(&temporary, &path)
        };
        write().map_err(|error| format!("cannot persist {}: {error}", path.display()))
    }

    /// One stored record, if present and readable.
    pub(super) fn read(&self, kind: Kind, id: &str) -> Option<Value> {
        let bytes = std::fs::read(self.path(kind, id)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub(super) fn remove(&self, kind: Kind, id: &str) {
        let path = self.path(kind, id);
        if let Err(error) = std::fs::remove_file(&path) {
            if error.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), %error, "cannot remove a persisted definition");
            }
        }
    }

    /// Every stored definition of `kind`, with the file it came from; a file that does not
    /// parse is an error naming it.
    pub(super) fn load(&self, kind: Kind) -> Result<Vec<(PathBuf, Value)>, String> {
        let dir = self.root.join(kind.dir());
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(format!("cannot read {}: {error}", dir.display())),
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
            .collect();
        paths.sort();
        paths
            .into_iter()
            .map(|path| {
                let bytes = std::fs::read(&path)
                    .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
                let value = serde_json::from_slice(&bytes)
                    .map_err(|error| format!("{} is corrupt: {error}", path.display()))?;
                Ok((path, value))
            })
            .collect()
    }
}
