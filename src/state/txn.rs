//! Transactions: every operation applies or none does. The operations run against a copy of
//! the tables (an O(1) clone of the persistent maps), which replaces the original only if all
//! of them succeeded. KV verbs are `kv.rs`'s own; the catalog verbs here are built on the
//! same writes `catalog.rs` uses for registrations, so a node, service or check written by a
//! transaction is indistinguishable from a registered one. Error texts are Consul's.

use super::{catalog, kv, session, Tables};
use crate::types::{
    CatalogVerb, Check, KvOp, Node, OpFailure, Service, TxnOp, TxnOutcome, TxnResult,
};

/// The results one operation contributes, or what went wrong with it.
type Outcome = Result<Option<Vec<TxnResult>>, OpFailure>;

/// One operation of a transaction: a bare KV op (`Command::Txn`) or any `TxnOp`.
pub(super) trait Step {
    fn apply(&self, tables: &mut Tables, index: u64, touched: &mut Vec<String>) -> Outcome;
    /// Whether it may change catalog health, so sessions bound to it must be re-checked.
    fn touches_catalog(&self) -> bool;
}

impl Step for KvOp {
    fn apply(&self, tables: &mut Tables, index: u64, touched: &mut Vec<String>) -> Outcome {
        kv::apply_op(tables, index, self, touched).map_err(|failure| OpFailure(failure.what()))
    }

    fn touches_catalog(&self) -> bool {
        false
    }
}

impl Step for TxnOp {
    fn apply(&self, tables: &mut Tables, index: u64, touched: &mut Vec<String>) -> Outcome {
        match self {
            TxnOp::Kv(op) => op.apply(tables, index, touched),
            TxnOp::Node { verb, node } => node_op(tables, index, *verb, node, touched),
            TxnOp::Service {
                verb,
                node,
                service,
            } => service_op(tables, index, *verb, node, service, touched),
            TxnOp::Check { verb, check } => check_op(tables, index, *verb, check, touched),
        }
    }

    fn touches_catalog(&self) -> bool {
        !matches!(self, TxnOp::Kv(_))
    }
}

fn fail(what: String) -> Outcome {
    Err(OpFailure(what))
}

/// Applies every op or none, reporting each failing op by its position.
pub(super) fn apply<S: Step>(
    tables: &mut Tables,
    index: u64,
    ops: &[S],
    touched: &mut Vec<String>,
) -> TxnOutcome {
    let mut working = tables.clone();
    let mut working_touched = Vec::new();
    let mut results = Vec::new();
    let mut errors = Vec::new();
    for (op_index, op) in ops.iter().enumerate() {
        match op.apply(&mut working, index, &mut working_touched) {
            Ok(result) => results.extend(result.into_iter().flatten()),
            Err(failure) => errors.push(failure.at(op_index)),
        }
    }
    if !errors.is_empty() {
        return TxnOutcome::RolledBack(errors);
    }
    if ops.iter().any(Step::touches_catalog) {
        session::invalidate_unhealthy(&mut working, index, &mut working_touched);
    }
    *tables = working;
    touched.extend(working_touched);
    TxnOutcome::Committed(results)
}

/// Runs a read-only transaction against a snapshot, without Raft.
pub fn read(tables: &Tables, ops: &[TxnOp]) -> TxnOutcome {
    let mut scratch = tables.clone();
    apply(&mut scratch, tables.last_index, ops, &mut Vec::new())
}

/// Whether an entry last written at `current` (0: absent) may be written by a CAS expecting
/// `expected` (0: only if absent).
fn cas_holds(expected: u64, current: Option<u64>) -> bool {
    expected == current.unwrap_or(0)
}

fn node_op(
    tables: &mut Tables,
    index: u64,
    verb: CatalogVerb,
    node: &Node,
    touched: &mut Vec<String>,
) -> Outcome {
    // Consul finds the node by id when one is given, else by name.
    let find = |tables: &Tables| {
        let found = if node.id.is_empty() {
            tables.node(&node.name)
        } else {
            tables.nodes().find(|other| other.id == node.id)
        };
        found.cloned().map(|found| vec![TxnResult::Node(found)])
    };
    let name = &node.name;
    match verb {
        CatalogVerb::Get => find(tables)
            .map(Some)
            .ok_or_else(|| OpFailure(format!("node {name:?} doesn't exist"))),
        CatalogVerb::Set => {
            catalog::ensure_node(tables, index, node, touched)
                .map_err(|e| OpFailure(e.to_string()))?;
            Ok(find(tables))
        }
        CatalogVerb::Cas { index: expected } => {
            let current = tables.node(name).map(|node| node.indexes.modify);
            if !cas_holds(expected, current) {
                return fail(format!("failed to set node {name:?}, index is stale"));
            }
            catalog::ensure_node(tables, index, node, touched)
                .map_err(|e| OpFailure(e.to_string()))?;
            Ok(find(tables))
        }
        CatalogVerb::Delete => {
            catalog::remove_node(tables, index, name, touched);
            Ok(None)
        }
        CatalogVerb::DeleteCas { index: expected } => {
            let current = tables.node(name).map(|node| node.indexes.modify);
            if current != Some(expected) {
                return fail(format!("failed to delete node {name:?}, index is stale"));
            }
            catalog::remove_node(tables, index, name, touched);
            Ok(None)
        }
    }
}

fn service_op(
    tables: &mut Tables,
    index: u64,
    verb: CatalogVerb,
    node: &str,
    service: &Service,
    touched: &mut Vec<String>,
) -> Outcome {
    let id = &service.id;
    let find = |tables: &Tables| {
        tables
            .service(node, id)
            .cloned()
            .map(|found| vec![TxnResult::Service(found)])
    };
    let current = tables.service(node, id).map(|found| found.indexes.modify);
    match verb {
        CatalogVerb::Get => find(tables)
            .map(Some)
            .ok_or_else(|| OpFailure(format!("service {id:?} on node {node:?} doesn't exist"))),
        CatalogVerb::Set | CatalogVerb::Cas { .. } => {
            if let CatalogVerb::Cas { index: expected } = verb {
                if !cas_holds(expected, current) {
                    return fail(format!(
                        "failed to set service {id:?} on node {node:?}, index is stale"
                    ));
                }
            }
            if tables.node(node).is_none() {
                return Err(OpFailure("Missing node registration".into()));
            }
            catalog::upsert_service(tables, index, node, service, touched);
            Ok(find(tables))
        }
        CatalogVerb::Delete => {
            catalog::remove_service(tables, index, node, id, touched);
            Ok(None)
        }
        CatalogVerb::DeleteCas { index: expected } => {
            if current != Some(expected) {
                return fail(format!(
                    "failed to delete service {id:?} on node {node:?}, index is stale"
                ));
            }
            catalog::remove_service(tables, index, node, id, touched);
            Ok(None)
        }
    }
}

fn check_op(
    tables: &mut Tables,
    index: u64,
    verb: CatalogVerb,
    check: &Check,
    touched: &mut Vec<String>,
) -> Outcome {
    let (node, id) = (&check.node, &check.check_id);
    let find = |tables: &Tables| {
        tables
            .node_checks(node)
            .find(|found| &found.check_id == id)
            .cloned()
            .map(|found| vec![TxnResult::Check(found)])
    };
    let current = tables
        .node_checks(node)
        .find(|found| &found.check_id == id)
        .map(|found| found.indexes.modify);
    match verb {
        CatalogVerb::Get => find(tables)
            .map(Some)
            .ok_or_else(|| OpFailure(format!("check {id:?} on node {node:?} doesn't exist"))),
        CatalogVerb::Set | CatalogVerb::Cas { .. } => {
            if let CatalogVerb::Cas { index: expected } = verb {
                if !cas_holds(expected, current) {
                    return fail(format!(
                        "failed to set check {id:?} on node {node:?}, index is stale"
                    ));
                }
            }
            if tables.node(node).is_none() {
                return Err(OpFailure("Missing node registration".into()));
            }
            if !check.service_id.is_empty() && tables.service(node, &check.service_id).is_none() {
                return Err(OpFailure("Missing service registration".into()));
            }
            catalog::upsert_check(tables, index, node, check, touched);
            Ok(find(tables))
        }
        CatalogVerb::Delete => {
            catalog::remove_check(tables, index, node, id, touched);
            Ok(None)
        }
        CatalogVerb::DeleteCas { index: expected } => {
            if current != Some(expected) {
                return fail(format!(
                    "failed to delete check {id:?} on node {node:?}, index is stale"
                ));
            }
            catalog::remove_check(tables, index, node, id, touched);
            Ok(None)
        }
    }
}
