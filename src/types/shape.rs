//! Which shape of stored data is being encoded or decoded. bincode writes fields by position,
//! so a struct that gains a field cannot read bytes written before it had it. Instead of
//! keeping a frozen copy of every enclosing type (`Command`, `RegisterRequest`, `Tables`),
//! a field added later reads and writes itself through this gate: code decoding an older
//! log record, snapshot or frame runs inside [`with_shape`], and the field then neither
//! reads nor writes bytes, taking its default. Self-describing formats (JSON) always carry
//! the field.

use std::cell::Cell;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Shapes of stored data, oldest first; each is named for the change that ended it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Shape {
    /// Storage format 2 log records, snapshot formats 2–5, wire format 1: services and nodes
    /// carry no `Locality`.
    BeforeLocality,
    Current,
}

thread_local! {
    static SHAPE: Cell<Shape> = const { Cell::new(Shape::Current) };
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

fn has_locality() -> bool {
    SHAPE.with(Cell::get) > Shape::BeforeLocality
}

/// `serialize_with` for a field that older shapes lack: written only where it exists.
pub fn write_locality<T: Serialize, S: Serializer>(
    value: &Option<T>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    if serializer.is_human_readable() || has_locality() {
        value.serialize(serializer)
    } else {
        // bincode writes a unit as nothing, which is what the old shape holds here.
        serializer.serialize_unit()
    }
}

/// `deserialize_with` for the same field: read only where it exists, else `None`.
pub fn read_locality<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    if deserializer.is_human_readable() || has_locality() {
        Option::deserialize(deserializer)
    } else {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Grown {
        name: String,
        #[serde(serialize_with = "write_locality", deserialize_with = "read_locality")]
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
        let decoded: Grown =
            with_shape(Shape::BeforeLocality, || bincode::deserialize(&old)).unwrap();
        assert_eq!(
            decoded,
            Grown {
                name: "n".into(),
                added: None,
                after: 7
            }
        );
        // Writing in the old shape gives the old bytes back.
        let rewritten = with_shape(Shape::BeforeLocality, || bincode::serialize(&decoded)).unwrap();
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
        let from_json: Grown =
            with_shape(Shape::BeforeLocality, || serde_json::from_str(&json)).unwrap();
        assert_eq!(from_json, grown);
    }
}
