//! The ACL tables: tokens (by AccessorID, with a SecretID index), policies, roles and the
//! bootstrap index, changed only by `Command::Acl`.
//!
//! The handler validates a write against the tables it read (names resolved to IDs, rules
//! parsed); applying re-checks only what a concurrent write could have changed underneath it:
//! uniqueness of IDs and names, and compare-and-set.

use std::sync::Arc;

use imbl::OrdMap;

use super::Tables;
use crate::types::acl::{AclOp, Policy, Role, Token};
use crate::types::{ApplyError, CommandResult, RaftIndexes};

/// Topic every ACL change touches.
pub const ACL_TOPIC: &str = "acl";

/// The ACL part of `Tables`, encoded as one snapshot section.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct AclTables {
    tokens: OrdMap<String, Arc<Token>>,
    policies: OrdMap<String, Arc<Policy>>,
    roles: OrdMap<String, Arc<Role>>,
    /// Raft index of the last bootstrap (0 = never).
    bootstrap_index: u64,
    /// Last index that changed any ACL table.
    index: u64,
    /// SecretID → AccessorID; derived from `tokens`, rebuilt on restore.
    #[serde(skip)]
    secrets: OrdMap<String, String>,
}

impl AclTables {
    pub(super) fn rebuild_secrets(&mut self) {
        self.secrets = self
            .tokens
            .values()
            .map(|token| (token.secret_id.clone(), token.accessor_id.clone()))
            .collect();
    }
}

impl Tables {
    /// Last index that changed any ACL table; resolved tokens are cached until it moves.
    pub fn acl_index(&self) -> u64 {
        self.acl.index
    }

    pub fn acl_bootstrap_index(&self) -> u64 {
        self.acl.bootstrap_index
    }

    pub fn acl_token(&self, accessor_id: &str) -> Option<&Arc<Token>> {
        self.acl.tokens.get(accessor_id)
    }

    pub fn acl_token_by_secret(&self, secret_id: &str) -> Option<&Arc<Token>> {
        let accessor = self.acl.secrets.get(secret_id)?;
        self.acl.tokens.get(accessor)
    }

    pub fn acl_tokens(&self) -> impl Iterator<Item = &Arc<Token>> {
        self.acl.tokens.values()
    }

    pub fn acl_policy(&self, id: &str) -> Option<&Arc<Policy>> {
        self.acl.policies.get(id)
    }

    pub fn acl_policy_by_name(&self, name: &str) -> Option<&Arc<Policy>> {
        self.acl
            .policies
            .values()
            .find(|policy| policy.name == name)
    }

    pub fn acl_policies(&self) -> impl Iterator<Item = &Arc<Policy>> {
        self.acl.policies.values()
    }

    pub fn acl_role(&self, id: &str) -> Option<&Arc<Role>> {
        self.acl.roles.get(id)
    }

    pub fn acl_role_by_name(&self, name: &str) -> Option<&Arc<Role>> {
        self.acl.roles.values().find(|role| role.name == name)
    }

    pub fn acl_roles(&self) -> impl Iterator<Item = &Arc<Role>> {
        self.acl.roles.values()
    }
}

fn cas_holds(cas: Option<u64>, current: Option<RaftIndexes>) -> bool {
    match (cas, current) {
        (None, _) | (Some(0), None) => true,
        (Some(expected), Some(indexes)) => indexes.modify == expected,
        (Some(_), None) => false,
    }
}

fn stamped(current: Option<RaftIndexes>, index: u64) -> RaftIndexes {
    RaftIndexes {
        create: current.map_or(index, |indexes| indexes.create),
        modify: index,
    }
}

pub(super) fn apply(
    tables: &mut Tables,
    index: u64,
    op: &AclOp,
    touched: &mut Vec<String>,
) -> CommandResult {
    let acl = &mut tables.acl;
    let result = match op {
        AclOp::TokenSet { token, cas } => set_token(acl, index, token, *cas),
        AclOp::TokenDelete { accessor_id } => {
            if let Some(token) = acl.tokens.remove(accessor_id) {
                acl.secrets.remove(&token.secret_id);
            }
            CommandResult::Done
        }
        AclOp::PolicySet { policy, cas } => {
            let current = acl.policies.get(&policy.id).map(|stored| stored.indexes);
            if !cas_holds(*cas, current) {
                return CommandResult::Cas(false);
            }
            if acl
                .policies
                .values()
                .any(|other| other.name == policy.name && other.id != policy.id)
            {
                return CommandResult::Error(ApplyError::AclNameInUse {
                    kind: "Policy".into(),
                    name: policy.name.clone(),
                });
            }
            let mut stored = (**policy).clone();
            stored.indexes = stamped(current, index);
            acl.policies.insert(stored.id.clone(), Arc::new(stored));
            CommandResult::Cas(true)
        }
        AclOp::PolicyDelete { id } => {
            acl.policies.remove(id);
            CommandResult::Done
        }
        AclOp::RoleSet { role, cas } => {
            let current = acl.roles.get(&role.id).map(|stored| stored.indexes);
            if !cas_holds(*cas, current) {
                return CommandResult::Cas(false);
            }
            if acl
                .roles
                .values()
                .any(|other| other.name == role.name && other.id != role.id)
            {
                return CommandResult::Error(ApplyError::AclNameInUse {
                    kind: "Role".into(),
                    name: role.name.clone(),
                });
            }
            let mut stored = (**role).clone();
            stored.indexes = stamped(current, index);
            acl.roles.insert(stored.id.clone(), Arc::new(stored));
            CommandResult::Cas(true)
        }
        AclOp::RoleDelete { id } => {
            acl.roles.remove(id);
            CommandResult::Done
        }
        AclOp::Bootstrap { token, reset_index } => {
            if acl.bootstrap_index != *reset_index {
                return CommandResult::Error(ApplyError::AclBootstrapDone(acl.bootstrap_index));
            }
            let result = set_token(acl, index, token, Some(0));
            if result == CommandResult::Cas(true) {
                acl.bootstrap_index = index;
            }
            result
        }
    };
    acl.index = index;
    touched.push(ACL_TOPIC.into());
    result
}

fn set_token(acl: &mut AclTables, index: u64, token: &Token, cas: Option<u64>) -> CommandResult {
    let current = acl
        .tokens
        .get(&token.accessor_id)
        .map(|stored| stored.indexes);
    if !cas_holds(cas, current) {
        return CommandResult::Cas(false);
    }
    if acl
        .secrets
        .get(&token.secret_id)
        .is_some_and(|holder| *holder != token.accessor_id)
    {
        return CommandResult::Error(ApplyError::AclTokenIdInUse("SecretID".into()));
    }
    if let Some(previous) = acl.tokens.get(&token.accessor_id) {
        acl.secrets.remove(&previous.secret_id);
    }
    let mut stored = token.clone();
    stored.indexes = stamped(current, index);
    acl.secrets
        .insert(stored.secret_id.clone(), stored.accessor_id.clone());
    acl.tokens
        .insert(stored.accessor_id.clone(), Arc::new(stored));
    CommandResult::Cas(true)
}
