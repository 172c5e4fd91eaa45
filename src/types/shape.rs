//! Which shape of stored data is being encoded or decoded. bincode writes fields by position,
//! so a struct that gains a field cannot read bytes written before it had it. Instead of
//! keeping a frozen copy of every enclosing type (`Command`, `RegisterRequest`, `Tables`),
//! a field added later reads and writes itself through this gate
//! (`#[serde(with = "shape::added_in_v2")]`): code decoding an older log record, snapshot or
//! frame runs inside [`with_shape`], and the field then neither reads nor writes bytes,
//! taking its default. Self-describing formats (JSON) always carry the field.

use std::cell::Cell;

/// Shapes of stored data, oldest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Shape {
    /// Log format 2, snapshot formats 2–5, RPC frame format 1.
    V1,
    /// Adds `Locality` to nodes and services and the durations as written to the CA
    /// configuration. Log format 3, snapshot format 6, frame format 2.
    V2,
}

impl Shape {
    pub const CURRENT: Shape = Shape::V2;
}

thread_local! {
    static SHAPE: Cell<Shape> = const { Cell::new(Shape::CURRENT) };
}

/// Runs `f` (an encode or decode) with data of `shape`, restoring the previous shape after.
pub fn with_shape<T>(shape: Shape, f: impl FnOnce() -> T) -> T {
    struct Restore(Shape);
    impl Drop for Restore {
        fn drop(&mut self) {
            SHAPE.with(|current| current.set(self.0));
        }
    }
    let _restore = Restore(SHAPE.with(|current| current.replace(shape)));
    f()
}

/// An `Option` field that shapes before V2 lack: written and read only where it exists,
/// else absent from the bytes and `None`.
pub mod added_in_v2 {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::{Shape, SHAPE};

    fn present() -> bool {
        SHAPE.with(std::cell::Cell::get) >= Shape::V2
    }

    pub fn serialize<T: Serialize, S: Serializer>(
        value: &Option<T>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() || present() {
            value.serialize(serializer)
        } else {
            // bincode writes a unit as nothing, which is what the old shape holds here.
            serializer.serialize_unit()
        }
    }

    pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<T>, D::Error> {
        if deserializer.is_human_readable() || present() {
            Option::deserialize(deserializer)
        } else {
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Grown {
        name: String,
        #[serde(with = "added_in_v2")]
        added: Option<String>,
        after: u32,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Old {
        name: String,
        after: u32,
    }

    #[test]
    fn old_bytes_decode_with_the_field_absent_and_current_ones_round_trip() {
        let old = bincode::serialize(&Old {
            name: "n".into(),
            after: 7,
        })
        .unwrap();
        let decoded: Grown = with_shape(Shape::V1, || bincode::deserialize(&old)).unwrap();
        assert_eq!(
            decoded,
            Grown {
                name: "n".into(),
                added: None,
                after: 7
            }
        );
        // Writing in the old shape gives the old bytes back.
        let rewritten = with_shape(Shape::V1, || bincode::serialize(&decoded)).unwrap();
        assert_eq!(rewritten, old);
        // The current shape carries the field, and the gate is restored after use.
        let grown = Grown {
            added: Some("x".into()),
            ..decoded
        };
        let bytes = bincode::serialize(&grown).unwrap();
        assert_ne!(bytes, old);
        assert_eq!(bincode::deserialize::<Grown>(&bytes).unwrap(), grown);
        let json = serde_json::to_string(&grown).unwrap();
        let from_json: Grown = with_shape(Shape::V1, || serde_json::from_str(&json)).unwrap();
        assert_eq!(from_json, grown);
    }
}
