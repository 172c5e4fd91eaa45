//! Snapshot archives in Consul's layout (`GET`/`PUT /v1/snapshot`, `concord snapshot
//! save|restore|inspect`): a gzip'd tar holding `meta.json` (Consul's snapshot metadata
//! fields), `state.bin` (the state store's tables, `state::Store::encode`) and `SHA256SUMS`
//! (`<hex>  <name>` for the other two). The checksums are verified before anything is
//! restored, so a truncated or damaged archive is refused whole.
//!
//! `state.bin` is concord's own encoding, not Consul's FSM stream: an archive moves between
//! concord clusters, not into Consul.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

/// `meta.json`, with Consul's field names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Meta {
    pub version: u32,
    #[serde(rename = "ID")]
    pub id: String,
    pub index: u64,
    pub term: u64,
    pub size: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArchiveError {
    #[error("failed to read snapshot archive: {0}")]
    Unreadable(String),
    #[error("snapshot archive is missing {0}")]
    Missing(&'static str),
    #[error("snapshot archive's {0} does not match its SHA256SUMS; the file is damaged")]
    Checksum(&'static str),
}

const META: &str = "meta.json";
const STATE: &str = "state.bin";
const SUMS: &str = "SHA256SUMS";

fn sha256_hex(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Builds the archive for `state` taken at `index` in `term`.
pub fn write(state: &[u8], index: u64, term: u64, taken_unix_ms: u128) -> Vec<u8> {
    let meta = Meta {
        version: 1,
        id: format!("{term}-{index}-{taken_unix_ms}"),
        index,
        term,
        size: state.len() as u64,
    };
    // Serialising a plain struct cannot fail.
    let meta = serde_json::to_vec(&meta).unwrap_or_default();
    let sums = format!(
        "{}  {META}\n{}  {STATE}\n",
        sha256_hex(&meta),
        sha256_hex(state)
    );
    let gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gzip);
    for (name, bytes) in [
        (META, meta.as_slice()),
        (STATE, state),
        (SUMS, sums.as_bytes()),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o600);
        header.set_mtime((taken_unix_ms / 1000) as u64);
        header.set_cksum();
        // Writing into a Vec cannot fail.
        let _ = tar.append_data(&mut header, name, bytes);
    }
    tar.into_inner()
        .and_then(|mut gzip| {
            gzip.flush()?;
            gzip.finish()
        })
        .unwrap_or_default()
}

/// Reads an archive, verifying every checksum; returns its metadata and `state.bin`.
/// `limit` bounds how much the archive may expand to.
pub fn read(archive: &[u8], limit: u64) -> Result<(Meta, Vec<u8>), ArchiveError> {
    let unreadable = |error: std::io::Error| ArchiveError::Unreadable(error.to_string());
    let gzip = flate2::read::GzDecoder::new(archive).take(limit);
    let mut tar = tar::Archive::new(gzip);
    let (mut meta, mut state, mut sums) = (None, None, None);
    for entry in tar.entries().map_err(unreadable)? {
        let mut entry = entry.map_err(unreadable)?;
        let name = entry
            .path()
            .map_err(unreadable)?
            .to_string_lossy()
            .into_owned();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).map_err(unreadable)?;
        match name.as_str() {
            META => meta = Some(bytes),
            STATE => state = Some(bytes),
            SUMS => sums = Some(bytes),
            _ => {}
        }
    }
    let meta = meta.ok_or(ArchiveError::Missing(META))?;
    let state = state.ok_or(ArchiveError::Missing(STATE))?;
    let sums = String::from_utf8_lossy(&sums.ok_or(ArchiveError::Missing(SUMS))?).into_owned();
    for (name, bytes) in [(META, &meta), (STATE, &state)] {
        let listed = sums.lines().find_map(|line| {
            let (sum, file) = line.split_once("  ")?;
            (file == name).then_some(sum)
        });
        if listed != Some(sha256_hex(bytes).as_str()) {
            return Err(ArchiveError::Checksum(name));
        }
    }
    let meta: Meta = serde_json::from_slice(&meta)
        .map_err(|error| ArchiveError::Unreadable(format!("{META}: {error}")))?;
    Ok((meta, state))
}

#[cfg(test)]
mod tests {
    use super::{read, write, ArchiveError};

    #[test]
    fn an_archive_reads_back_and_names_what_is_damaged() {
        let state = b"tables".repeat(1000);
        let archive = write(&state, 42, 3, 1_700_000_000_000);
        let (meta, read_back) = read(&archive, 1 << 20).expect("reads");
        assert_eq!(read_back, state);
        assert_eq!((meta.index, meta.term, meta.size), (42, 3, 6000));
        assert_eq!(meta.id, "3-42-1700000000000");

        // Truncated: the gzip stream or the tar ends early.
        let truncated = &archive[..archive.len() / 2];
        assert!(matches!(
            read(truncated, 1 << 20),
            Err(ArchiveError::Unreadable(_) | ArchiveError::Missing(_))
        ));
        // Not an archive at all.
        assert!(matches!(
            read(b"plain text", 1 << 20),
            Err(ArchiveError::Unreadable(_))
        ));
        // Expanding past the limit.
        assert!(read(&archive, 100).is_err());
    }

    #[test]
    fn a_state_that_does_not_match_its_checksum_is_refused() {
        // Rebuild an archive whose state.bin differs from what SHA256SUMS lists.
        let good = write(b"original", 1, 1, 0);
        let (_, _) = read(&good, 1 << 20).expect("good archive");
        let mut entries = Vec::new();
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(good.as_slice()));
        for entry in tar.entries().expect("entries") {
            let mut entry = entry.expect("entry");
            let name = entry.path().expect("path").to_string_lossy().into_owned();
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut bytes).expect("read");
            if name == "state.bin" {
                bytes = b"tampered".to_vec();
            }
            entries.push((name, bytes));
        }
        let gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut builder = tar::Builder::new(gzip);
        for (name, bytes) in &entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_cksum();
            builder
                .append_data(&mut header, name, bytes.as_slice())
                .expect("append");
        }
        let tampered = builder.into_inner().expect("tar").finish().expect("gzip");
        assert_eq!(
            read(&tampered, 1 << 20),
            Err(ArchiveError::Checksum("state.bin"))
        );
    }
}
