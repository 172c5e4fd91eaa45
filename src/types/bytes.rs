//! Serde for byte strings (KV values) as bytes rather than as a sequence of numbers.
//!
//! bincode writes both the same way, a u64 length and then the bytes, so logs and snapshots
//! written before this decode unchanged. What differs is the work: a `Vec<u8>` left to serde's
//! sequence impls is encoded and decoded one call per byte, and a KV value goes through
//! bincode several times per write (forwarded, logged, replicated to each follower, logged
//! there). As bytes it is one copy. Formats without a byte type (JSON) still see a sequence.

use std::fmt;

use serde::de::{SeqAccess, Visitor};
use serde::{Deserializer, Serializer};

pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_bytes(bytes)
}

pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    deserializer.deserialize_byte_buf(ByteString)
}

struct ByteString;

impl<'de> Visitor<'de> for ByteString {
    type Value = Vec<u8>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a byte string")
    }

    fn visit_bytes<E>(self, bytes: &[u8]) -> Result<Vec<u8>, E> {
        Ok(bytes.to_vec())
    }

    fn visit_byte_buf<E>(self, bytes: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(bytes)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        // The hint comes from the input; cap what is reserved before the bytes arrive.
        let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64 * 1024));
        while let Some(byte) = seq.next_element()? {
            bytes.push(byte);
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct AsSequence {
        key: String,
        value: Vec<u8>,
        flags: u64,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct AsBytes {
        key: String,
        #[serde(with = "super")]
        value: Vec<u8>,
        flags: u64,
    }

    #[test]
    fn bincode_and_json_encodings_are_unchanged() {
        let value: Vec<u8> = (0..=255).collect();
        let old = AsSequence {
            key: "k".into(),
            value: value.clone(),
            flags: 7,
        };
        let new = AsBytes {
            key: "k".into(),
            value,
            flags: 7,
        };
        let bincode_old = bincode::serialize(&old).expect("encode");
        assert_eq!(bincode::serialize(&new).expect("encode"), bincode_old);
        assert_eq!(
            bincode::deserialize::<AsBytes>(&bincode_old).expect("decode"),
            new
        );
        let json_old = serde_json::to_string(&old).expect("encode");
        assert_eq!(serde_json::to_string(&new).expect("encode"), json_old);
        assert_eq!(
            serde_json::from_str::<AsBytes>(&json_old).expect("decode"),
            new
        );
    }

    #[test]
    fn a_length_past_the_input_is_an_error_not_an_allocation() {
        let mut bytes = bincode::serialize(&AsBytes {
            key: String::new(),
            value: vec![1, 2, 3],
            flags: 0,
        })
        .expect("encode");
        // The value's u64 length follows the empty key's (8 bytes).
        bytes[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(bincode::deserialize::<AsBytes>(&bytes).is_err());
    }
}
