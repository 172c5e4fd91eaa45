//! What the state store refuses when it applies a command. These are business failures,
//! returned as values inside `CommandResult` (never errors of the log or of the state
//! machine), with Consul's messages.

use serde::{Deserialize, Serialize};

/// Why applying a command changed nothing. Plain data: it travels in `CommandResult`, which
/// openraft encodes as the response of an apply; it is never written to the log or a snapshot,
/// so its shape may change. Every message is Consul's; the HTTP edge answers each with a 500,
/// as Consul answers its FSM's refusals.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ApplyError {
    /// A KV lock or unlock named a session that does not exist.
    #[error("Invalid session {0:?}")]
    InvalidSession(String),
    /// A registration carries a node id that another node already has.
    #[error(
        "failed inserting node: node ID {id:?} for node {node:?} aliases existing node {existing:?}"
    )]
    NodeIdTaken {
        id: String,
        node: String,
        existing: String,
    },
    /// A registration gives an existing node's name another node id while that node is not
    /// known to have failed (its `serfHealth` is not critical).
    #[error("Node name {node} is reserved by node {existing_id} with name {node} ({address})")]
    NodeNameReserved {
        node: String,
        existing_id: String,
        address: String,
    },
    /// A registration with `SkipNodeUpdate` for a node the catalog does not have, and no
    /// address to create it with.
    #[error("node {0:?} is not registered")]
    NodeNotRegistered(String),
    /// A registered check names a service that is neither registered on its node nor part of
    /// the same registration.
    #[error("Unknown service ID {service_id:?} for check ID {check_id:?}")]
    UnknownCheckService {
        service_id: String,
        check_id: String,
    },
    /// A session id that is already in use.
    #[error("Session {0:?} already exists")]
    SessionExists(String),
    /// A session for a node the catalog does not have.
    #[error("Missing node registration")]
    SessionNodeMissing(String),
    /// A session bound to a check its node does not have.
    #[error("Missing check '{0}' registration")]
    SessionCheckMissing(String),
    /// A session bound to a check that is critical.
    #[error("Check '{0}' is in critical state")]
    SessionCheckCritical(String),
    /// A restored snapshot's state could not be decoded (it was checked before it was
    /// proposed, so this means a damaged log entry).
    #[error("failed to restore snapshot: {0}")]
    SnapshotUnreadable(String),
    /// A piece or the commit of a restore that is not the one being staged, or not next in
    /// it: another restore started meanwhile.
    #[error("failed to restore snapshot: {0}")]
    RestoreInterrupted(String),
    /// An ACL token whose AccessorID or SecretID another token has (a race the handler's own
    /// check could not see).
    #[error("Invalid Token: {0} is already in use")]
    AclTokenIdInUse(String),
    /// A policy or role name another one has.
    #[error("Invalid {kind}: A {kind} with Name {name:?} already exists")]
    AclNameInUse { kind: String, name: String },
    /// A second bootstrap, or a reset with the wrong index.
    #[error("ACL bootstrap no longer allowed (reset index: {0})")]
    AclBootstrapDone(u64),
    /// A prepared query named as another one is.
    #[error("name '{0}' aliases an existing query name")]
    QueryNameTaken(String),
    /// A prepared query named as another one's ID (it could shadow that query).
    #[error("name '{0}' aliases an existing query ID")]
    QueryNameIsAnId(String),
    /// A second template with the empty name (it would match every name).
    #[error("a query template with an empty name already exists")]
    QueryCatchAllTaken,
    /// A prepared query bound to a session that does not exist.
    #[error("invalid session {0:?}")]
    QuerySessionInvalid(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The texts are Consul's and clients match on them: each is pinned here.
    #[test]
    fn messages_are_consuls() {
        let cases = [
            (
                ApplyError::InvalidSession("ghost".into()),
                r#"Invalid session "ghost""#,
            ),
            (
                ApplyError::NodeNameReserved {
                    node: "c1".into(),
                    existing_id: "id-a".into(),
                    address: "10.0.0.1".into(),
                },
                "Node name c1 is reserved by node id-a with name c1 (10.0.0.1)",
            ),
            (
                ApplyError::NodeIdTaken {
                    id: "id-1".into(),
                    node: "n2".into(),
                    existing: "n1".into(),
                },
                r#"failed inserting node: node ID "id-1" for node "n2" aliases existing node "n1""#,
            ),
            (
                ApplyError::NodeNotRegistered("n1".into()),
                r#"node "n1" is not registered"#,
            ),
            (
                ApplyError::UnknownCheckService {
                    service_id: "web".into(),
                    check_id: "c1".into(),
                },
                r#"Unknown service ID "web" for check ID "c1""#,
            ),
            (
                ApplyError::SessionExists("s1".into()),
                r#"Session "s1" already exists"#,
            ),
            (
                ApplyError::SessionNodeMissing("n1".into()),
                "Missing node registration",
            ),
            (
                ApplyError::SessionCheckMissing("serfHealth".into()),
                "Missing check 'serfHealth' registration",
            ),
            (
                ApplyError::SessionCheckCritical("serfHealth".into()),
                "Check 'serfHealth' is in critical state",
            ),
        ];
        for (error, text) in cases {
            assert_eq!(error.to_string(), text);
        }
    }
}
