//! A linearizability checker for a key-value store, per key (a register with put, get and
//! compare-and-set), in the style of Knossos and Porcupine: Wing & Gong's search with
//! memoization of (operations linearized, register state).
//!
//! A history is the operations clients ran, each with when it was invoked and when its
//! answer arrived. An operation whose answer never arrived (a timeout, a connection cut
//! mid-request) may have taken effect at any time after its invocation, or never; one that
//! answered took effect exactly once between the two instants. The history is linearizable
//! when some order of the operations respects both that real-time order and the register's
//! sequential behaviour. Keys are independent (a register per key), so each is checked alone.
//!
//! Values written are unique per history, so a compare-and-set on Consul's `ModifyIndex`
//! (which names one write) is a compare-and-set on the value that write stored.

use std::collections::{BTreeMap, HashSet};

pub type Value = u64;

/// What an operation did, as its client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Put(Value),
    /// A read that returned this value (`None`: no such key).
    Get(Option<Value>),
    /// Compare-and-set from `expected` to `new`; `ok` is whether it reported success.
    Cas {
        expected: Value,
        new: Value,
        ok: bool,
    },
}

/// One operation on one key; times in any monotonic unit. `returned` is `None` when the
/// outcome is unknown (then `Get` and a `Cas`'s `ok` carry no information).
#[derive(Clone, Debug)]
pub struct Operation {
    pub key: String,
    pub action: Action,
    pub invoked: u64,
    pub returned: Option<u64>,
}

/// Checks every key; on failure, the first key whose history has no linearization.
pub fn check(history: &[Operation]) -> Result<(), String> {
    let mut by_key: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for operation in history {
        by_key.entry(&operation.key).or_default().push(operation);
    }
    for (key, operations) in by_key {
        if !linearizable(&operations) {
            let mut lines: Vec<String> = operations
                .iter()
                .map(|op| format!("  {:?} [{}, {:?}]", op.action, op.invoked, op.returned))
                .collect();
            lines.sort();
            return Err(format!(
                "key {key:?}: no linearization of its {} operations:\n{}",
                operations.len(),
                lines.join("\n")
            ));
        }
    }
    Ok(())
}

/// The register after `action` from `state`, when `action` could have happened there.
/// `known` is whether the operation answered.
fn step(state: Option<Value>, action: &Action, known: bool) -> Option<Option<Value>> {
    match action {
        Action::Put(value) => Some(Some(*value)),
        Action::Get(_) if !known => Some(state),
        Action::Get(seen) => (state == *seen).then_some(state),
        Action::Cas { expected, new, .. } if !known => {
            // Unknown outcome: it could only have taken effect where it would succeed.
            (state == Some(*expected)).then_some(Some(*new))
        }
        Action::Cas { expected, new, ok } => match (*ok, state == Some(*expected)) {
            (true, true) => Some(Some(*new)),
            (false, false) => Some(state),
            _ => None,
        },
    }
}

/// Which operations have been linearized, one bit each.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Done(Vec<u64>);

impl Done {
    fn new(len: usize) -> Done {
        Done(vec![0; len.div_ceil(64)])
    }

    fn has(&self, index: usize) -> bool {
        self.0[index / 64] & (1 << (index % 64)) != 0
    }

    fn with(&self, index: usize) -> Done {
        let mut next = self.clone();
        next.0[index / 64] |= 1 << (index % 64);
        next
    }
}

fn linearizable(operations: &[&Operation]) -> bool {
    // Operations that answered must be linearized; unanswered reads tell nothing and are
    // dropped; other unanswered operations may be linearized or left out.
    let ops: Vec<&Operation> = operations
        .iter()
        .copied()
        .filter(|op| op.returned.is_some() || !matches!(op.action, Action::Get(_)))
        .collect();
    let mut seen = HashSet::new();
    search(&ops, Done::new(ops.len()), None, &mut seen)
}

/// Depth-first: which operation may take effect next from (`done`, `state`)?
fn search(
    ops: &[&Operation],
    done: Done,
    state: Option<Value>,
    seen: &mut HashSet<(Done, Option<Value>)>,
) -> bool {
    let pending = || (0..ops.len()).filter(|index| !done.has(*index));
    if pending().all(|index| ops[index].returned.is_none()) {
        return true;
    }
    if !seen.insert((done.clone(), state)) {
        return false;
    }
    // Nothing may take effect after an operation that is still to be linearized returned:
    // the next one must have been invoked before the earliest such return.
    let horizon = pending()
        .filter_map(|index| ops[index].returned)
        .min()
        .unwrap_or(u64::MAX);
    for index in pending() {
        let op = ops[index];
        if op.invoked > horizon {
            continue;
        }
        if let Some(next) = step(state, &op.action, op.returned.is_some()) {
            if search(ops, done.with(index), next, seen) {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::{check, Action, Operation};

    fn op(action: Action, invoked: u64, returned: Option<u64>) -> Operation {
        Operation {
            key: "k".into(),
            action,
            invoked,
            returned,
        }
    }

    #[test]
    fn accepts_sequential_and_overlapping_histories() {
        let history = vec![
            op(Action::Get(None), 0, Some(1)),
            op(Action::Put(1), 2, Some(3)),
            op(Action::Get(Some(1)), 4, Some(5)),
            // Two overlapping writes and a read that overlaps both: either value may be read.
            op(Action::Put(2), 6, Some(10)),
            op(Action::Put(3), 7, Some(9)),
            op(Action::Get(Some(2)), 8, Some(11)),
            op(
                Action::Cas {
                    expected: 2,
                    new: 4,
                    ok: true,
                },
                12,
                Some(13),
            ),
            op(
                Action::Cas {
                    expected: 2,
                    new: 5,
                    ok: false,
                },
                14,
                Some(15),
            ),
            op(Action::Get(Some(4)), 16, Some(17)),
        ];
        assert_eq!(check(&history), Ok(()));
    }

    #[test]
    fn rejects_a_stale_read() {
        // The write answered before the read began, and the read saw the old value.
        let history = vec![
            op(Action::Put(1), 0, Some(1)),
            op(Action::Put(2), 2, Some(3)),
            op(Action::Get(Some(1)), 4, Some(5)),
        ];
        let refusal = check(&history).expect_err("a stale read is not linearizable");
        assert!(refusal.contains("key \"k\""), "{refusal}");
    }

    #[test]
    fn rejects_a_lost_write_and_a_double_compare_and_set() {
        let lost = vec![
            op(Action::Put(1), 0, Some(1)),
            op(Action::Get(None), 2, Some(3)),
        ];
        assert!(check(&lost).is_err());
        // Two compare-and-sets from the same value cannot both succeed.
        let double = vec![
            op(Action::Put(1), 0, Some(1)),
            op(
                Action::Cas {
                    expected: 1,
                    new: 2,
                    ok: true,
                },
                2,
                Some(5),
            ),
            op(
                Action::Cas {
                    expected: 1,
                    new: 3,
                    ok: true,
                },
                3,
                Some(6),
            ),
        ];
        assert!(check(&double).is_err());
    }

    #[test]
    fn an_unanswered_write_may_or_may_not_have_happened() {
        let applied = vec![
            op(Action::Put(1), 0, None),
            op(Action::Get(Some(1)), 5, Some(6)),
        ];
        assert_eq!(check(&applied), Ok(()));
        let never = vec![
            op(Action::Put(1), 0, None),
            op(Action::Get(None), 5, Some(6)),
        ];
        assert_eq!(check(&never), Ok(()));
        // But not both, in this order: once read, it stays.
        let flicker = vec![
            op(Action::Put(1), 0, None),
            op(Action::Get(Some(1)), 5, Some(6)),
            op(Action::Get(None), 7, Some(8)),
        ];
        assert!(check(&flicker).is_err());
    }

    #[test]
    fn keys_are_checked_apart() {
        let mut history = vec![op(Action::Put(1), 0, Some(1))];
        history.push(Operation {
            key: "other".into(),
            action: Action::Get(None),
            invoked: 2,
            returned: Some(3),
        });
        assert_eq!(check(&history), Ok(()));
    }
}
