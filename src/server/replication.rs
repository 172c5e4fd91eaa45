//! Replication from the primary datacenter, as Consul's secondaries do it: the leader of a
//! datacenter that is not `primary_datacenter` keeps a copy of what the primary owns (config
//! entries, intentions among them; with ACLs, policies and roles; with
//! `acl.enable_token_replication`, the tokens that are not local). Each kind is one loop: a
//! blocking read of the primary's list (`GET /v1/internal/replicate/<kind>` carried there by
//! `rpc::federation` with the `replication` token), then the local writes that make this
//! datacenter's copy equal to it, deletions first so a name an older object held is free.
//! Writes of these objects made here travel to the primary (`http::forward`), so the copy is
//! never written to by anyone else.
//!
//! Every write is `write_as_leader`, and a loop stops when this server stops leading; the next
//! leader starts over from index 0, which costs one full comparison.

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::api::replicate::{Batch, Replicated};
use crate::config::RuntimeConfig;
use crate::rpc::wire::{HttpForward, Reply, Request};
use crate::rpc::ServerRpc;
use crate::state::Tables;
use crate::types::acl::{AclOp, Policy, Role, Token};
use crate::types::connect::ConfigEntry;
use crate::types::{Command, RaftIndexes};

/// How long one blocking read of the primary waits for a change.
const WAIT: Duration = Duration::from_secs(60);
/// How long past its wait a read may take to come back.
const MARGIN: Duration = Duration::from_secs(30);
/// The first pause after a failed round, doubled up to `MAX_BACKOFF`.
const BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The kinds this server's datacenter replicates: none in the primary.
pub fn kinds(config: &RuntimeConfig) -> Vec<Replicated> {
    if config.primary_datacenter == config.datacenter {
        return Vec::new();
    }
    let mut kinds = vec![Replicated::ConfigEntries];
    if config.acl.enabled {
        kinds.extend([Replicated::Policies, Replicated::Roles]);
        if config.acl.enable_token_replication {
            kinds.push(Replicated::Tokens);
        }
    }
    kinds
}

/// Runs one kind's loop until `shutdown`.
pub async fn run(
    rpc: Arc<ServerRpc>,
    config: Arc<RuntimeConfig>,
    kind: Replicated,
    shutdown: CancellationToken,
) {
    let mut leadership = rpc.leadership();
    loop {
        // Wait to lead.
        while !leadership.borrow_and_update().is_leader {
            tokio::select! {
                changed = leadership.changed() => if changed.is_err() { return },
                _ = shutdown.cancelled() => return,
            }
        }
        tracing::info!(
            kind = kind.path_name(),
            primary = %config.primary_datacenter,
            "replicating from the primary datacenter"
        );
        let mut index = 0;
        let mut backoff = BACKOFF;
        loop {
            let round = async {
                let batch = fetch(&rpc, &config, kind, index).await?;
                let applied = converge(&rpc, kind, batch.items).await?;
                Ok::<_, String>((batch.index, applied))
            };
            let outcome = tokio::select! {
                outcome = round => outcome,
                _ = leadership.changed() => break,
                _ = shutdown.cancelled() => return,
            };
            match outcome {
                Ok((at, applied)) => {
                    if applied > 0 {
                        tracing::debug!(kind = kind.path_name(), at, applied, "replicated");
                    }
                    // An index that went back (the primary restored a snapshot) starts over.
                    index = if at < index { 0 } else { at };
                    backoff = BACKOFF;
                }
                Err(error) => {
                    tracing::warn!(kind = kind.path_name(), %error, "replication round failed; will retry");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = leadership.changed() => break,
                        _ = shutdown.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// The primary's list of `kind` once its index passes `index` (or the wait runs out).
async fn fetch(
    rpc: &ServerRpc,
    config: &RuntimeConfig,
    kind: Replicated,
    index: u64,
) -> Result<Batch<serde_json::Value>, String> {
    let mut headers = Vec::new();
    if let Some(token) = &config.acl.tokens.replication {
        headers.push(("x-consul-token".to_string(), token.clone()));
    }
    let forward = HttpForward {
        datacenter: config.primary_datacenter.clone(),
        method: "GET".into(),
        path_and_query: format!(
            "/v1/internal/replicate/{}?index={index}&wait={}s",
            kind.path_name(),
            WAIT.as_secs()
        ),
        headers,
        body: Vec::new(),
        timeout_ms: u64::try_from((WAIT + MARGIN).as_millis()).unwrap_or(u64::MAX),
    };
    let answer = match rpc.handle(Request::Http(forward), false).await {
        Reply::Http(answer) => answer.map_err(|error| error.to_string())?,
        _ => return Err("the server answered another request".into()),
    };
    if answer.status != 200 {
        return Err(format!(
            "the primary refused ({}): {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        ));
    }
    serde_json::from_slice(&answer.body).map_err(|error| format!("unreadable answer: {error}"))
}

/// Makes this datacenter's copy of `kind` equal to `items`; how many writes it took.
async fn converge(
    rpc: &ServerRpc,
    kind: Replicated,
    items: Vec<serde_json::Value>,
) -> Result<usize, String> {
    let tables = rpc.store().snapshot();
    let writes = match kind {
        Replicated::ConfigEntries => diff::<ConfigEntry>(&tables, items)?,
        Replicated::Policies => diff::<Policy>(&tables, items)?,
        Replicated::Roles => diff::<Role>(&tables, items)?,
        Replicated::Tokens => diff::<Token>(&tables, items)?,
    };
    let count = writes.len();
    for command in writes {
        rpc.write_as_leader(command)
            .await
            .map_err(|error| error.to_string())?;
    }
    Ok(count)
}

/// The writes that turn the local copy into `items`: deletions of what the primary no longer
/// has, then every object that is new or differs (Raft indexes aside, which are each
/// datacenter's own).
fn diff<T: Replica>(
    tables: &Tables,
    items: Vec<serde_json::Value>,
) -> Result<Vec<Command>, String> {
    let wanted: Vec<T> = items
        .into_iter()
        .map(serde_json::from_value)
        .collect::<Result<_, _>>()
        .map_err(|error| format!("unreadable {}: {error}", T::NAME))?;
    let held = T::held(tables);
    let mut writes: Vec<Command> = held
        .iter()
        .filter(|local| !wanted.iter().any(|item| item.key() == local.key()))
        .map(|local| local.delete())
        .collect();
    for item in wanted {
        let same = held
            .iter()
            .any(|local| local.key() == item.key() && local.same(&item));
        if !same {
            writes.push(item.set());
        }
    }
    Ok(writes)
}

/// An object kind the primary owns.
trait Replica: DeserializeOwned + Clone {
    const NAME: &'static str;
    /// This datacenter's copies (for tokens, only the global ones).
    fn held(tables: &Tables) -> Vec<Self>;
    fn key(&self) -> (String, String);
    /// Equal apart from Raft indexes.
    fn same(&self, other: &Self) -> bool;
    fn set(self) -> Command;
    fn delete(&self) -> Command;
}

impl Replica for ConfigEntry {
    const NAME: &'static str = "config entry";
    fn held(tables: &Tables) -> Vec<Self> {
        tables
            .config_entries()
            .map(|entry| (**entry).clone())
            .collect()
    }
    fn key(&self) -> (String, String) {
        (self.kind.clone(), self.name.clone())
    }
    fn same(&self, other: &Self) -> bool {
        self.json == other.json
    }
    fn set(self) -> Command {
        Command::ConfigEntrySet {
            entry: Box::new(ConfigEntry::new(self.kind, self.name, self.json)),
            cas: None,
        }
    }
    fn delete(&self) -> Command {
        Command::ConfigEntryDelete {
            kind: self.kind.clone(),
            name: self.name.clone(),
            cas: None,
        }
    }
}

impl Replica for Policy {
    const NAME: &'static str = "policy";
    fn held(tables: &Tables) -> Vec<Self> {
        tables
            .acl_policies()
            .map(|policy| (**policy).clone())
            .collect()
    }
    fn key(&self) -> (String, String) {
        (self.id.clone(), String::new())
    }
    fn same(&self, other: &Self) -> bool {
        let plain = |policy: &Policy| Policy {
            indexes: RaftIndexes::default(),
            ..policy.clone()
        };
        plain(self) == plain(other)
    }
    fn set(self) -> Command {
        Command::Acl(AclOp::PolicySet {
            policy: Box::new(self),
            cas: None,
        })
    }
    fn delete(&self) -> Command {
        Command::Acl(AclOp::PolicyDelete {
            id: self.id.clone(),
        })
    }
}

impl Replica for Role {
    const NAME: &'static str = "role";
    fn held(tables: &Tables) -> Vec<Self> {
        tables.acl_roles().map(|role| (**role).clone()).collect()
    }
    fn key(&self) -> (String, String) {
        (self.id.clone(), String::new())
    }
    fn same(&self, other: &Self) -> bool {
        let plain = |role: &Role| Role {
            indexes: RaftIndexes::default(),
            ..role.clone()
        };
        plain(self) == plain(other)
    }
    fn set(self) -> Command {
        Command::Acl(AclOp::RoleSet {
            role: Box::new(self),
            cas: None,
        })
    }
    fn delete(&self) -> Command {
        Command::Acl(AclOp::RoleDelete {
            id: self.id.clone(),
        })
    }
}

impl Replica for Token {
    const NAME: &'static str = "token";
    fn held(tables: &Tables) -> Vec<Self> {
        tables
            .acl_tokens()
            .filter(|token| !token.local)
            .map(|token| (**token).clone())
            .collect()
    }
    fn key(&self) -> (String, String) {
        (self.accessor_id.clone(), String::new())
    }
    fn same(&self, other: &Self) -> bool {
        let plain = |token: &Token| Token {
            indexes: RaftIndexes::default(),
            ..token.clone()
        };
        plain(self) == plain(other)
    }
    fn set(self) -> Command {
        Command::Acl(AclOp::TokenSet {
            token: Box::new(self),
            cas: None,
        })
    }
    fn delete(&self) -> Command {
        Command::Acl(AclOp::TokenDelete {
            accessor_id: self.accessor_id.clone(),
        })
    }
}
