//! The wire form of foca's headers and member updates: bincode, behind a one-byte version so
//! a later layout can be told apart. A packet that does not decode is an error for that
//! packet only.

use bytes::{Buf, BufMut};
use foca::{Header, Member};

use super::identity::NodeIdentity;

/// The layout version every encoded item starts with.
const VERSION: u8 = 1;

#[derive(Clone, Copy, Debug, Default)]
pub struct Codec;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("unknown gossip encoding version {0}")]
    Version(u8),
    #[error("truncated gossip packet")]
    Truncated,
    #[error("undecodable gossip packet: {0}")]
    Decode(String),
    #[error("no room for the item in the packet")]
    NoRoom,
}

fn encode<T: serde::Serialize>(item: &T, mut buf: impl BufMut) -> Result<(), CodecError> {
    let bytes = bincode::serialize(item).map_err(|error| CodecError::Decode(error.to_string()))?;
    if buf.remaining_mut() < bytes.len() + 1 {
        return Err(CodecError::NoRoom);
    }
    buf.put_u8(VERSION);
    buf.put_slice(&bytes);
    Ok(())
}

fn decode<T: serde::de::DeserializeOwned>(mut buf: impl Buf) -> Result<T, CodecError> {
    if !buf.has_remaining() {
        return Err(CodecError::Truncated);
    }
    let version = buf.get_u8();
    if version != VERSION {
        return Err(CodecError::Version(version));
    }
    // bincode reads from a contiguous slice (foca guarantees one) and tells how much it used.
    let chunk = buf.chunk();
    let mut reader = std::io::Cursor::new(chunk);
    let item = bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_limit(chunk.len() as u64)
        .deserialize_from(&mut reader)
        .map_err(|error| CodecError::Decode(error.to_string()))?;
    let used = reader.position() as usize;
    buf.advance(used);
    Ok(item)
}

use bincode::Options;

impl foca::Codec<NodeIdentity> for Codec {
    type Error = CodecError;

    fn encode_header(
        &mut self,
        header: &Header<NodeIdentity>,
        buf: impl BufMut,
    ) -> Result<(), CodecError> {
        encode(header, buf)
    }

    fn decode_header(&mut self, buf: impl Buf) -> Result<Header<NodeIdentity>, CodecError> {
        decode(buf)
    }

    fn encode_member(
        &mut self,
        member: &Member<NodeIdentity>,
        buf: impl BufMut,
    ) -> Result<(), CodecError> {
        encode(member, buf)
    }

    fn decode_member(&mut self, buf: impl Buf) -> Result<Member<NodeIdentity>, CodecError> {
        decode(buf)
    }
}

/// Decodes one whole message of ours (a push-pull state, a broadcast, a probe, a keyring
/// answer): fixed-width bincode, every byte used, never reading past the input.
pub fn decode_whole<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::Error> {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_limit(bytes.len() as u64)
        .deserialize(bytes)
}
