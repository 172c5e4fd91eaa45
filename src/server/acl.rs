//! The leader's ACL duties: on taking office with ACLs enabled, store the built-in policies,
//! the anonymous token and the configured initial management token (which uses up the
//! one-time bootstrap, as Consul's does); while leading, delete tokens past their expiration.
//!
//! Every write is create-only or an exact delete, so two leaders in quick succession, or a
//! restart, cannot undo an operator's change (a renamed built-in policy keeps its name).

use crate::config::RuntimeConfig;
use crate::rpc::ServerRpc;
use crate::types::acl::{
    AclOp, Policy, ANONYMOUS_ACCESSOR, ANONYMOUS_SECRET, GLOBAL_MANAGEMENT_ID,
    GLOBAL_MANAGEMENT_NAME, GLOBAL_READ_ONLY_ID, GLOBAL_READ_ONLY_NAME,
};
use crate::types::Command;

use crate::api::acl::system_token;

fn builtin_policy(id: &str, name: &str, description: &str, rules: &str) -> Policy {
    let mut policy = Policy {
        id: id.into(),
        name: name.into(),
        description: description.into(),
        rules: rules.into(),
        ..Policy::default()
    };
    crate::api::acl::hash_policy(&mut policy);
    policy
}

/// Whether every built-in is in place (else the leader tries again shortly).
pub async fn init(rpc: &ServerRpc, config: &RuntimeConfig) -> bool {
    if !config.acl.enabled {
        return true;
    }
    let mut writes = Vec::new();
    let tables = rpc.store().snapshot();
    if tables.acl_policy(GLOBAL_MANAGEMENT_ID).is_none() {
        writes.push(AclOp::PolicySet {
            policy: Box::new(builtin_policy(
                GLOBAL_MANAGEMENT_ID,
                GLOBAL_MANAGEMENT_NAME,
                "Builtin Policy that grants unlimited access",
                crate::acl::rules::GLOBAL_MANAGEMENT_TEXT,
            )),
            cas: Some(0),
        });
    }
    if tables.acl_policy(GLOBAL_READ_ONLY_ID).is_none() {
        writes.push(AclOp::PolicySet {
            policy: Box::new(builtin_policy(
                GLOBAL_READ_ONLY_ID,
                GLOBAL_READ_ONLY_NAME,
                "Builtin Policy that grants unlimited read-only access to all components",
                crate::acl::rules::GLOBAL_READ_ONLY_TEXT,
            )),
            cas: Some(0),
        });
    }
    if tables.acl_token(ANONYMOUS_ACCESSOR).is_none() {
        writes.push(AclOp::TokenSet {
            token: Box::new(system_token(
                ANONYMOUS_ACCESSOR.into(),
                ANONYMOUS_SECRET.into(),
                "Anonymous Token",
                Vec::new(),
            )),
            cas: Some(0),
        });
    }
    // Consul makes the initial management token in the primary only; a secondary gets the
    // primary's through replication.
    let primary = config.primary_datacenter == config.datacenter;
    if let (Some(secret), true) = (&config.acl.initial_management, primary) {
        if tables.acl_token_by_secret(secret).is_none() {
            let token = Box::new(system_token(
                uuid::Uuid::new_v4().to_string(),
                secret.clone(),
                "Initial Management Token",
                vec![GLOBAL_MANAGEMENT_ID.into()],
            ));
            writes.push(match tables.acl_bootstrap_index() {
                0 => AclOp::Bootstrap {
                    token,
                    reset_index: 0,
                },
                _ => AclOp::TokenSet {
                    token,
                    cas: Some(0),
                },
            });
        }
    }
    let mut done = true;
    for op in writes {
        // A refusal means another write got there first (a concurrent bootstrap): settled.
        if let Err(error) = rpc.write_as_leader(Command::Acl(op)).await {
            tracing::warn!(%error, "storing the built-in ACL objects failed; will retry");
            done = false;
        }
    }
    if done {
        tracing::debug!("ACL system initialized");
    }
    done
}

/// Deletes every token past its expiration time.
pub async fn reap_expired(rpc: &ServerRpc) {
    let now = crate::api::acl::now_nanos();
    let expired: Vec<String> = rpc
        .store()
        .snapshot()
        .acl_tokens()
        .filter(|token| token.expired(now))
        .map(|token| token.accessor_id.clone())
        .collect();
    for accessor_id in expired {
        let command = Command::Acl(AclOp::TokenDelete { accessor_id });
        if let Err(error) = rpc.write_as_leader(command).await {
            tracing::warn!(%error, "reaping an expired ACL token failed");
            return;
        }
    }
}
