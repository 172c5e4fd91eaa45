//! The Raft log's entries on disk: append-only segment files of checksummed records.
//!
//! A segment is named by the index of its first entry (`00000000000000000001.log`) and holds
//! consecutive entries as records `[length: u32][crc32: u32][payload]`. Appends go to the end
//! of the last segment with one `pwrite` per batch; durability is a separate `fdatasync`
//! issued by the flusher for a whole group of batches, so writers never wait on each other's
//! fsync. Truncation (conflicting entries) cuts the file; purging deletes whole segments that
//! lie entirely below the purge point, so disk use stays bounded.
//!
//! Recovery reads every segment. A bad record at the end of the last segment is a torn write
//! from a crash, and is cut off at the next append; anywhere else it is damage, and opening
//! fails naming the file. Whether a torn tail held acknowledged entries is checked by the
//! caller against the progress marker.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A new segment is started once the current one reaches this size.
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
const HEADER_BYTES: u64 = 8;
/// No single entry may be larger than this; a larger length in a header is damage.
const MAX_RECORD_BYTES: u64 = 256 * 1024 * 1024;

struct Segment {
    first_index: u64,
    path: PathBuf,
    file: Arc<File>,
    /// Byte offset of each record; entry `first_index + i` starts at `offsets[i]`.
    offsets: Vec<u64>,
    /// End of the last valid record: where the next append goes.
    end: u64,
    /// Bytes past `end` (a torn tail) must be cut before appending.
    needs_trim: bool,
}

impl Segment {
    fn next_index(&self) -> u64 {
        self.first_index + self.offsets.len() as u64
    }

    fn record_len(&self, position: usize) -> u64 {
        let next = self.offsets.get(position + 1).copied().unwrap_or(self.end);
        next - self.offsets[position]
    }
}

/// Where to read one entry's record.
pub struct RecordLocation {
    file: Arc<File>,
    offset: u64,
    len: u64,
    path: PathBuf,
}

impl RecordLocation {
    /// Reads and verifies the record, returning its payload.
    pub(super) fn read(&self) -> Result<Vec<u8>, String> {
        let mut record = vec![0u8; self.len as usize];
        self.file
            .read_exact_at(&mut record, self.offset)
            .map_err(|error| format!("{}: {error}", self.path.display()))?;
        parse_record(&record)
            .map(|(payload, _)| payload.to_vec())
            .ok_or_else(|| {
                format!(
                    "{}: damaged record at offset {}",
                    self.path.display(),
                    self.offset
                )
            })
    }
}

/// Parses one record at the start of `bytes`: its payload and total length, or `None` when
/// the bytes do not hold a whole, intact record.
fn parse_record(bytes: &[u8]) -> Option<(&[u8], u64)> {
    let header = bytes.get(..HEADER_BYTES as usize)?;
    let len = u64::from(u32::from_be_bytes(header[..4].try_into().ok()?));
    let crc = u32::from_be_bytes(header[4..8].try_into().ok()?);
    if len > MAX_RECORD_BYTES {
        return None;
    }
    let payload = bytes.get(HEADER_BYTES as usize..(HEADER_BYTES + len) as usize)?;
    (crc32fast::hash(payload) == crc).then_some((payload, HEADER_BYTES + len))
}

fn push_record(buffer: &mut Vec<u8>, payload: &[u8]) {
    buffer.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    buffer.extend_from_slice(&crc32fast::hash(payload).to_be_bytes());
    buffer.extend_from_slice(payload);
}

fn segment_name(first_index: u64) -> String {
    format!("{first_index:020}.log")
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

pub struct Wal {
    dir: PathBuf,
    segments: BTreeMap<u64, Segment>,
}

impl Wal {
    /// Opens the log directory and recovers every segment (read-only: nothing is changed
    /// until the first write).
    pub(super) fn open(dir: &Path) -> Result<Wal, String> {
        std::fs::create_dir_all(dir)
            .map_err(|error| format!("cannot create {}: {error}", dir.display()))?;
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)
            .map_err(|error| format!("cannot read {}: {error}", dir.display()))?
        {
            let path = entry
                .map_err(|error| format!("cannot read {}: {error}", dir.display()))?
                .path();
            let first_index = path
                .file_name()
                .and_then(|name| name.to_str())
                .and_then(|name| name.strip_suffix(".log"))
                .and_then(|stem| stem.parse::<u64>().ok());
            if let Some(first_index) = first_index {
                names.push((first_index, path));
            }
        }
        names.sort();
        let mut segments = BTreeMap::new();
        let count = names.len();
        let mut expected_first: Option<u64> = None;
        for (position, (first_index, path)) in names.into_iter().enumerate() {
            let is_last = position + 1 == count;
            let segment = recover_segment(first_index, &path, is_last)?;
            // Gaps between segments are legitimate (the log continues after a snapshot's
            // index); overlapping segments are not.
            if let Some(expected) = expected_first {
                if first_index < expected {
                    return Err(format!(
                        "{}: overlaps the previous segment, which ends at index {}",
                        path.display(),
                        expected - 1
                    ));
                }
            }
            if segment.offsets.is_empty() && !is_last {
                return Err(format!(
                    "{}: empty segment before the end of the log",
                    path.display()
                ));
            }
            expected_first = Some(segment.next_index());
            segments.insert(first_index, segment);
        }
        Ok(Wal {
            dir: dir.to_path_buf(),
            segments,
        })
    }

    /// The index of the last entry on disk.
    pub fn last_index(&self) -> Option<u64> {
        let segment = self.segments.values().next_back()?;
        segment
            .next_index()
            .checked_sub(1)
            .filter(|index| *index >= segment.first_index)
    }

    /// Where each entry in `start..end` is, for entries that exist.
    pub fn locate(&self, start: u64, end: u64) -> Vec<RecordLocation> {
        self.locate_within(start, end, u64::MAX)
    }

    /// As `locate`, stopping before the entry that would take the records past `budget`
    /// bytes; the first entry is located whatever its size.
    pub fn locate_within(&self, start: u64, end: u64, budget: u64) -> Vec<RecordLocation> {
        let mut found = Vec::new();
        let mut total = 0u64;
        let first_segment = self
            .segments
            .range(..=start)
            .next_back()
            .map_or(start, |(first, _)| *first);
        for segment in self.segments.range(first_segment..).map(|(_, s)| s) {
            if segment.first_index >= end {
                break;
            }
            let from = start.max(segment.first_index);
            let to = end.min(segment.next_index());
            for index in from..to {
                let position = (index - segment.first_index) as usize;
                let len = segment.record_len(position);
                total = total.saturating_add(len);
                if total > budget && !found.is_empty() {
                    return found;
                }
                found.push(RecordLocation {
                    file: segment.file.clone(),
                    offset: segment.offsets[position],
                    len,
                    path: segment.path.clone(),
                });
            }
        }
        found
    }

    /// Appends entries `(index, payload)` and returns the files to fsync to make them durable.
    ///
    /// openraft appends consecutive entries after the last one. The log also accepts what its
    /// contract allows: an entry at or below the last index replaces the tail from there (as
    /// `truncate_from` would), and an entry past a gap (after a purge beyond the end, when a
    /// snapshot was installed) starts a new segment there.
    pub fn append(&mut self, entries: &[(u64, Vec<u8>)]) -> std::io::Result<Vec<Arc<File>>> {
        let mut files: Vec<Arc<File>> = Vec::new();
        let mut rest = entries;
        while let Some((first_index, _)) = rest.first() {
            let run = rest
                .iter()
                .zip(*first_index..)
                .take_while(|((index, _), expected)| index == expected)
                .count();
            let file = self.append_run(&rest[..run])?;
            if !files.iter().any(|known| Arc::ptr_eq(known, &file)) {
                files.push(file);
            }
            rest = &rest[run..];
        }
        Ok(files)
    }

    /// Appends consecutive entries with one write.
    fn append_run(&mut self, entries: &[(u64, Vec<u8>)]) -> std::io::Result<Arc<File>> {
        let first_index = entries.first().map_or(0, |(index, _)| *index);
        if self
            .segments
            .values()
            .next_back()
            .is_some_and(|segment| first_index < segment.next_index())
        {
            self.truncate_from(first_index)?;
        }
        let start_new = match self.segments.values().next_back() {
            None => true,
            Some(segment) => segment.next_index() != first_index || segment.end >= SEGMENT_BYTES,
        };
        if start_new {
            self.start_segment(first_index)?;
        }
        let Some(segment) = self.segments.values_mut().next_back() else {
            return Err(std::io::Error::other("no segment to append to"));
        };
        if segment.needs_trim {
            segment.file.set_len(segment.end)?;
            segment.needs_trim = false;
        }
        let mut buffer = Vec::with_capacity(entries.iter().map(|(_, p)| p.len() + 8).sum());
        let mut offsets = Vec::with_capacity(entries.len());
        for (_, payload) in entries {
            offsets.push(segment.end + buffer.len() as u64);
            push_record(&mut buffer, payload);
        }
        segment.file.write_all_at(&buffer, segment.end)?;
        segment.end += buffer.len() as u64;
        segment.offsets.extend(offsets);
        Ok(segment.file.clone())
    }

    fn start_segment(&mut self, first_index: u64) -> std::io::Result<()> {
        let path = self.dir.join(segment_name(first_index));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        // The new name must survive a crash as well as the data written into it.
        fsync_dir(&self.dir)?;
        self.segments.insert(
            first_index,
            Segment {
                first_index,
                path,
                file: Arc::new(file),
                offsets: Vec::new(),
                end: 0,
                needs_trim: false,
            },
        );
        Ok(())
    }

    /// Removes every entry at or after `index`, durably.
    pub fn truncate_from(&mut self, index: u64) -> std::io::Result<()> {
        let doomed: Vec<u64> = self
            .segments
            .range(index..)
            .map(|(first, _)| *first)
            .collect();
        let mut removed_files = false;
        for first in doomed {
            if let Some(segment) = self.segments.remove(&first) {
                std::fs::remove_file(&segment.path)?;
                removed_files = true;
            }
        }
        if let Some(segment) = self.segments.values_mut().next_back() {
            if index < segment.next_index() {
                let position = (index - segment.first_index) as usize;
                segment.end = segment.offsets[position];
                segment.offsets.truncate(position);
                segment.file.set_len(segment.end)?;
                segment.file.sync_data()?;
            }
        }
        if removed_files {
            fsync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Deletes the segments whose entries all lie at or below `index`. The purge point may be
    /// past the end of the log (after installing a snapshot); appends then start a new
    /// segment wherever the log continues.
    pub fn purge_through(&mut self, index: u64) -> std::io::Result<()> {
        let doomed: Vec<u64> = self
            .segments
            .values()
            .filter(|segment| segment.next_index() <= index.saturating_add(1))
            .map(|segment| segment.first_index)
            .collect();
        for first in &doomed {
            if let Some(segment) = self.segments.remove(first) {
                std::fs::remove_file(&segment.path)?;
            }
        }
        if !doomed.is_empty() {
            fsync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Number of segment files, for tests.
    #[cfg(test)]
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }
}

fn recover_segment(first_index: u64, path: &Path, is_last: bool) -> Result<Segment, String> {
    let bytes =
        std::fs::read(path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    let mut offsets = Vec::new();
    let mut position = 0u64;
    while (position as usize) < bytes.len() {
        match parse_record(&bytes[position as usize..]) {
            Some((_, len)) => {
                offsets.push(position);
                position += len;
            }
            None if is_last => break,
            None => {
                return Err(format!(
                    "{}: damaged record at offset {position}",
                    path.display()
                ))
            }
        }
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|error| format!("cannot open {}: {error}", path.display()))?;
    Ok(Segment {
        first_index,
        path: path.to_path_buf(),
        file: Arc::new(file),
        offsets,
        end: position,
        needs_trim: position < bytes.len() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(index: u64) -> Vec<u8> {
        format!("entry-{index}").into_bytes()
    }

    fn read_all(wal: &Wal) -> Vec<String> {
        wal.locate(0, u64::MAX)
            .iter()
            .map(|location| String::from_utf8(location.read().unwrap()).unwrap())
            .collect()
    }

    #[test]
    fn appends_survive_reopen_and_truncate_cuts_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path()).unwrap();
        assert_eq!(wal.last_index(), None);
        let batch: Vec<(u64, Vec<u8>)> = (1..=5).map(|i| (i, payload(i))).collect();
        let files = wal.append(&batch).unwrap();
        assert_eq!(files.len(), 1);
        files[0].sync_data().unwrap();
        wal.append(&[(6, payload(6))]).unwrap();
        drop(wal);

        let mut wal = Wal::open(dir.path()).unwrap();
        assert_eq!(wal.last_index(), Some(6));
        assert_eq!(read_all(&wal).len(), 6);
        // Rewriting the tail replaces it.
        wal.append(&[(6, b"six".to_vec())]).unwrap();
        assert_eq!(read_all(&wal).last().unwrap(), "six");
        assert_eq!(wal.last_index(), Some(6));
        wal.truncate_from(4).unwrap();
        assert_eq!(wal.last_index(), Some(3));
        wal.append(&[(4, b"replaced".to_vec())]).unwrap();
        drop(wal);
        let wal = Wal::open(dir.path()).unwrap();
        assert_eq!(
            read_all(&wal),
            ["entry-1", "entry-2", "entry-3", "replaced"]
        );
    }

    #[test]
    fn a_gap_starts_a_new_segment_that_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path()).unwrap();
        wal.append(&[(1, payload(1)), (2, payload(2)), (10, payload(10))])
            .unwrap();
        assert_eq!(wal.segment_count(), 2);
        drop(wal);
        let wal = Wal::open(dir.path()).unwrap();
        assert_eq!(wal.last_index(), Some(10));
        assert_eq!(read_all(&wal), ["entry-1", "entry-2", "entry-10"]);
        assert!(wal.locate(3, 10).is_empty());
    }

    #[test]
    fn torn_tail_is_dropped_but_damage_in_the_middle_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path()).unwrap();
        let batch: Vec<(u64, Vec<u8>)> = (1..=3).map(|i| (i, payload(i))).collect();
        wal.append(&batch).unwrap();
        drop(wal);
        let segment = dir.path().join(segment_name(1));

        // A torn write: half a record at the end.
        let mut bytes = std::fs::read(&segment).unwrap();
        let whole = bytes.len();
        bytes.extend_from_slice(&[0, 0, 0, 50, 1, 2]);
        std::fs::write(&segment, &bytes).unwrap();
        let mut wal = Wal::open(dir.path()).unwrap();
        assert_eq!(wal.last_index(), Some(3));
        wal.append(&[(4, payload(4))]).unwrap();
        drop(wal);
        assert_eq!(read_all(&Wal::open(dir.path()).unwrap()).len(), 4);
        assert!(std::fs::metadata(&segment).unwrap().len() > whole as u64);

        // Damage in a segment that is not the last one.
        let mut wal = Wal::open(dir.path()).unwrap();
        wal.start_segment(5).unwrap();
        wal.append(&[(5, payload(5))]).unwrap();
        drop(wal);
        let mut bytes = std::fs::read(&segment).unwrap();
        bytes[10] ^= 0xff;
        std::fs::write(&segment, &bytes).unwrap();
        let error = Wal::open(dir.path()).err().expect("damage detected");
        assert!(
            error.contains(&segment_name(1)) && error.contains("damaged"),
            "{error}"
        );
    }

    #[test]
    fn purge_deletes_whole_segments_below_the_point() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path()).unwrap();
        for first in [1u64, 4, 7] {
            wal.start_segment(first).unwrap();
            let batch: Vec<(u64, Vec<u8>)> = (first..first + 3).map(|i| (i, payload(i))).collect();
            wal.append(&batch).unwrap();
        }
        assert_eq!(wal.segment_count(), 3);
        wal.purge_through(5).unwrap();
        assert_eq!(
            wal.segment_count(),
            2,
            "only the segment ending at 3 is wholly purged"
        );
        wal.purge_through(8).unwrap();
        assert_eq!(wal.segment_count(), 1, "the segment holding 9 stays");
        assert_eq!(wal.last_index(), Some(9));
        // Purging past the end (a snapshot install) empties the log; appends continue after it.
        wal.purge_through(100).unwrap();
        assert_eq!(wal.segment_count(), 0);
        wal.append(&[(101, payload(101))]).unwrap();
        assert_eq!(Wal::open(dir.path()).unwrap().last_index(), Some(101));
    }
}
