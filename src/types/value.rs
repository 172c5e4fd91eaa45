//! A KV value, held in memory or in a server's value file (`state::values`).
//!
//! A value arrives inline (from a request, a log entry or a decoded snapshot); the state store
//! moves it into its value file when it applies the write, so the tables hold a 24-byte handle
//! and the kernel's page cache holds the bytes. Reading a stored value is a `pread`, which can
//! fail, so reads return `io::Result`. On the wire (bincode and JSON) a value is its bytes,
//! whichever way it is held, exactly as the `Vec<u8>` it replaced.

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone)]
pub enum Value {
    Inline(Vec<u8>),
    Stored {
        file: Arc<ValueFile>,
        offset: u64,
        len: usize,
    },
}

impl Value {
    pub fn len(&self) -> usize {
        match self {
            Value::Inline(bytes) => bytes.len(),
            Value::Stored { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes: borrowed when inline, read from the file when stored.
    pub fn read(&self) -> io::Result<Cow<'_, [u8]>> {
        match self {
            Value::Inline(bytes) => Ok(Cow::Borrowed(bytes)),
            Value::Stored { file, offset, len } => file.read(*offset, *len).map(Cow::Owned),
        }
    }

    /// The file this value is stored in, if any.
    pub fn file(&self) -> Option<&Arc<ValueFile>> {
        match self {
            Value::Inline(_) => None,
            Value::Stored { file, .. } => Some(file),
        }
    }
}

impl Default for Value {
    fn default() -> Self {
        Value::Inline(Vec::new())
    }
}

impl From<Vec<u8>> for Value {
    fn from(bytes: Vec<u8>) -> Value {
        Value::Inline(bytes)
    }
}

impl From<&[u8]> for Value {
    fn from(bytes: &[u8]) -> Value {
        Value::Inline(bytes.to_vec())
    }
}

/// Equal bytes are equal values, however held; a value that cannot be read equals nothing.
impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        self.len() == other.len() && matches!((self.read(), other.read()), (Ok(a), Ok(b)) if a == b)
    }
}

impl Eq for Value {}

impl<const N: usize> PartialEq<&[u8; N]> for Value {
    fn eq(&self, other: &&[u8; N]) -> bool {
        self.len() == N && matches!(self.read(), Ok(bytes) if *bytes == other[..])
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        match self.read() {
            Ok(bytes) => write!(formatter, "{:?}", String::from_utf8_lossy(&bytes)),
            Err(error) => write!(formatter, "<{} unreadable bytes: {error}>", self.len()),
        }
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let bytes = self.read().map_err(|error| {
            serde::ser::Error::custom(format!("cannot read a stored KV value: {error}"))
        })?;
        super::bytes::serialize(&bytes, serializer)
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Value, D::Error> {
        super::bytes::deserialize(deserializer).map(Value::Inline)
    }
}

/// An append-only file of values, created unlinked: it has no name, so nothing is left behind
/// when the process dies, and its disk space is freed when the last handle to it is dropped.
pub struct ValueFile {
    file: std::fs::File,
    /// Where the next value goes; appends reserve their range here, so two writers (the
    /// applying tables and a discarded what-if copy of them) never overlap.
    end: AtomicU64,
}

impl ValueFile {
    pub fn create_in(dir: &Path) -> io::Result<ValueFile> {
        Ok(ValueFile {
            file: tempfile::tempfile_in(dir)?,
            end: AtomicU64::new(0),
        })
    }

    /// Bytes appended so far, live or not.
    pub fn len(&self) -> u64 {
        self.end.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `bytes` and returns the value that reads them back.
    pub fn append(self: &Arc<Self>, bytes: &[u8]) -> io::Result<Value> {
        let len = bytes.len();
        let offset = self.end.fetch_add(len as u64, Ordering::AcqRel);
        self.file.write_all_at(bytes, offset)?;
        Ok(Value::Stored {
            file: self.clone(),
            offset,
            len,
        })
    }

    fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut bytes = vec![0; len];
        self.file.read_exact_at(&mut bytes, offset)?;
        Ok(bytes)
    }
}

impl fmt::Debug for ValueFile {
    fn fmt(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        write!(formatter, "ValueFile({} bytes)", self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_value_reads_back_and_encodes_as_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let file = Arc::new(ValueFile::create_in(dir.path()).unwrap());
        let first = file.append(b"first").unwrap();
        let second = file.append(b"second value").unwrap();
        assert_eq!(file.len(), 17);
        assert_eq!(first.read().unwrap().as_ref(), b"first");
        assert_eq!(second.read().unwrap().as_ref(), b"second value");
        assert_eq!(second, Value::from(b"second value".to_vec()));
        assert_ne!(first, second);
        // The file has no name: nothing of it is left in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

        let inline = Value::from(b"second value".to_vec());
        assert_eq!(
            bincode::serialize(&second).unwrap(),
            bincode::serialize(&inline).unwrap()
        );
        assert_eq!(
            serde_json::to_string(&second).unwrap(),
            serde_json::to_string(&inline).unwrap()
        );
        let decoded: Value = bincode::deserialize(&bincode::serialize(&second).unwrap()).unwrap();
        assert!(matches!(&decoded, Value::Inline(bytes) if bytes == b"second value"));
    }
}
