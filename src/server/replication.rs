//! Replication from the primary datacenter, as Consul's secondaries do it: the leader of a
//! datacenter that is not `primary_datacenter` keeps a copy of what the primary owns (config
//! entries, intentions among them; with ACLs, policies and roles; with
//! `acl.enable_token_replication`, the tokens that are not local; with Connect, the CA's
//! roots). Each is one loop: a blocking read of the primary's state (`GET
//! /v1/internal/replicate/<kind>`, or `/v1/connect/ca/roots`, carried there by
//! `rpc::federation` with the `replication` token), then the local writes that make this
//! datacenter's copy equal to it, deletions first so a name an older object held is free.
//! The CA is federated as Consul's is: this datacenter signs leaves with its own
//! intermediate, which the primary's active root certified (`POST
//! /v1/internal/ca/sign-intermediate`), so every datacenter trusts every other's leaves.
//! Writes of these objects made here travel to the primary (`http::forward`), so the copy is
//! never written to by anyone else.
//!
//! Every write is `write_as_leader`, and a loop stops when this server stops leading; the next
//! leader starts over from index 0, which costs one full comparison.

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::api::replicate::{Batch, Replicated};
use crate::config::RuntimeConfig;
use crate::rpc::wire::{HttpForward, Reply, Request};
use crate::rpc::ServerRpc;
use crate::state::Tables;
use crate::types::acl::{AclOp, Policy, Role, Token};
use crate::types::connect::{CaRoot, CaState, ConfigEntry};
use crate::types::duration::unix_secs;
use crate::types::{Command, RaftIndexes};

/// How long one blocking read of the primary waits for a change.
const WAIT: Duration = Duration::from_secs(60);
/// How long past its wait a read may take to come back.
const MARGIN: Duration = Duration::from_secs(30);
/// The first pause after a failed round, doubled up to `MAX_BACKOFF`.
const BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// One thing a secondary keeps in step with the primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Job {
    Objects(Replicated),
    /// The Connect CA: the primary's roots, and an intermediate its active root signed.
    CaRoots,
}

impl Job {
    fn name(self) -> &'static str {
        match self {
            Job::Objects(kind) => kind.path_name(),
            Job::CaRoots => "ca-roots",
        }
    }
}

/// What this server's datacenter replicates: nothing in the primary.
pub fn jobs(config: &RuntimeConfig) -> Vec<Job> {
    if config.primary_datacenter == config.datacenter {
        return Vec::new();
    }
    let mut jobs = vec![Job::Objects(Replicated::ConfigEntries)];
    if config.connect_enabled {
        jobs.push(Job::CaRoots);
    }
    if config.acl.enabled {
        jobs.extend([
            Job::Objects(Replicated::Policies),
            Job::Objects(Replicated::Roles),
        ]);
        if config.acl.enable_token_replication {
            jobs.push(Job::Objects(Replicated::Tokens));
        }
    }
    jobs
}

/// Runs one job's loop until `shutdown`.
pub async fn run(
    rpc: Arc<ServerRpc>,
    config: Arc<RuntimeConfig>,
    job: Job,
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
            job = job.name(),
            primary = %config.primary_datacenter,
            "replicating from the primary datacenter"
        );
        let mut index = 0;
        let mut backoff = BACKOFF;
        loop {
            let outcome = tokio::select! {
                outcome = round(&rpc, &config, job, index) => outcome,
                _ = leadership.changed() => break,
                _ = shutdown.cancelled() => return,
            };
            match outcome {
                Ok((at, writes)) => {
                    if writes > 0 {
                        tracing::debug!(job = job.name(), at, writes, "replicated");
                    }
                    // An index that went back (the primary restored a snapshot) starts over.
                    index = if at < index { 0 } else { at };
                    backoff = BACKOFF;
                }
                Err(error) => {
                    tracing::warn!(job = job.name(), %error, "replication round failed; will retry");
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

/// One round: the primary's state once its index passes `index`, made this datacenter's;
/// the primary's index and how many writes it took.
async fn round(
    rpc: &ServerRpc,
    config: &RuntimeConfig,
    job: Job,
    index: u64,
) -> Result<(u64, usize), String> {
    let wait = format!("index={index}&wait={}s", WAIT.as_secs());
    match job {
        Job::Objects(kind) => {
            let path = format!("/v1/internal/replicate/{}?{wait}", kind.path_name());
            let (at, body) = ask(rpc, config, "GET", path, Vec::new()).await?;
            let batch: Batch<serde_json::Value> = serde_json::from_slice(&body)
                .map_err(|error| format!("unreadable answer: {error}"))?;
            Ok((at, converge(rpc, kind, batch.items).await?))
        }
        Job::CaRoots => {
            let path = format!("/v1/connect/ca/roots?{wait}");
            let (at, body) = ask(rpc, config, "GET", path, Vec::new()).await?;
            let roots: PrimaryRoots = serde_json::from_slice(&body)
                .map_err(|error| format!("unreadable roots: {error}"))?;
            Ok((at, federate_ca(rpc, config, roots).await?))
        }
    }
}

/// A request to the primary with the replication token: its index and body.
async fn ask(
    rpc: &ServerRpc,
    config: &RuntimeConfig,
    method: &str,
    path_and_query: String,
    body: Vec<u8>,
) -> Result<(u64, Vec<u8>), String> {
    let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
    if let Some(token) = &config.acl.tokens.replication {
        headers.push(("x-consul-token".to_string(), token.clone()));
    }
    let forward = HttpForward {
        datacenter: config.primary_datacenter.clone(),
        method: method.into(),
        path_and_query,
        headers,
        body,
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
    let index = answer
        .headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("x-consul-index"))
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0);
    Ok((index, answer.body))
}

/// The primary's `/v1/connect/ca/roots` as far as a secondary needs it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PrimaryRoots {
    #[serde(rename = "ActiveRootID")]
    active_root_id: String,
    trust_domain: String,
    roots: Vec<PrimaryRoot>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PrimaryRoot {
    #[serde(rename = "ID")]
    id: String,
    name: String,
    serial_number: String,
    root_cert: String,
    intermediate_certs: Option<Vec<String>>,
    active: bool,
    private_key_type: String,
    private_key_bits: u32,
}

/// Makes this datacenter's CA the primary's: its trust domain and roots (their certificates
/// only), with this datacenter's own intermediate, certified by the primary's active root,
/// first among the active root's intermediates and its key in that root's `key_pem`. A new
/// intermediate is made when there is none yet or the primary's active root changed.
async fn federate_ca(
    rpc: &ServerRpc,
    config: &RuntimeConfig,
    primary: PrimaryRoots,
) -> Result<usize, String> {
    let cluster_id = primary
        .trust_domain
        .strip_suffix(".consul")
        .ok_or_else(|| format!("unexpected trust domain {:?}", primary.trust_domain))?
        .to_string();
    let current = rpc.ca.state();
    let held = current
        .as_ref()
        .filter(|state| state.cluster_id == cluster_id)
        .and_then(|state| state.active_root())
        .filter(|root| root.id == primary.active_root_id)
        .and_then(|root| {
            Some((
                root.key_pem.clone(),
                root.intermediate_certs.first()?.clone(),
            ))
        });
    let (key_pem, intermediate) = match held {
        Some(held) => held,
        None => {
            let request = crate::connect::ca::intermediate_request(&primary.trust_domain)
                .map_err(|error| error.to_string())?;
            let body = serde_json::json!({ "CSR": request.csr_pem }).to_string();
            let path = "/v1/internal/ca/sign-intermediate".to_string();
            let (_, answer) = ask(rpc, config, "POST", path, body.into_bytes()).await?;
            let signed: serde_json::Value = serde_json::from_slice(&answer)
                .map_err(|error| format!("unreadable intermediate: {error}"))?;
            let certificate = signed["Certificate"]
                .as_str()
                .ok_or("the primary sent no intermediate")?;
            tracing::info!(root = %primary.active_root_id, "the primary signed this datacenter's CA intermediate");
            (request.key_pem, certificate.to_string())
        }
    };
    let mut roots = Vec::with_capacity(primary.roots.len());
    for root in primary.roots {
        let info = crate::connect::ca::cert_info(&root.root_cert)
            .map_err(|error| format!("the primary's root {}: {}", root.id, error.message()))?;
        let mut intermediates = root.intermediate_certs.unwrap_or_default();
        let mut key = String::new();
        if root.active {
            intermediates.insert(0, intermediate.clone());
            key = key_pem.clone();
        }
        roots.push(CaRoot {
            id: root.id,
            name: root.name,
            serial: root.serial_number,
            cert_pem: root.root_cert,
            key_pem: key,
            intermediate_certs: intermediates,
            not_before_unix: unix_secs(info.not_before),
            not_after_unix: unix_secs(info.not_after),
            active: root.active,
            key_type: root.private_key_type,
            key_bits: root.private_key_bits,
            rotated_out_unix: 0,
            indexes: RaftIndexes::default(),
        });
    }
    let plain = |roots: &[CaRoot]| -> Vec<CaRoot> {
        roots
            .iter()
            .map(|root| CaRoot {
                indexes: RaftIndexes::default(),
                ..root.clone()
            })
            .collect()
    };
    if let Some(current) = &current {
        if current.cluster_id == cluster_id && plain(&current.roots) == roots {
            return Ok(0);
        }
    }
    let state = CaState {
        cluster_id,
        config: current
            .as_ref()
            .map_or_else(|| config.ca_config.clone(), |state| state.config.clone()),
        roots,
        indexes: RaftIndexes::default(),
    };
    let expected = current.as_ref().map_or(0, |state| state.indexes.modify);
    rpc.ca
        .replace(state, expected)
        .await
        .map_err(|error| error.to_string())?;
    Ok(1)
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
trait Replica: DeserializeOwned + Clone + PartialEq {
    const NAME: &'static str;
    /// This datacenter's copies (for tokens, only the global ones).
    fn held(tables: &Tables) -> Vec<Self>;
    fn key(&self) -> (String, String);
    fn indexes(&mut self) -> &mut RaftIndexes;
    /// Equal apart from Raft indexes, which are each datacenter's own.
    fn same(&self, other: &Self) -> bool {
        let plain = |object: &Self| {
            let mut copy = object.clone();
            *copy.indexes() = RaftIndexes::default();
            copy
        };
        plain(self) == plain(other)
    }
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
    fn indexes(&mut self) -> &mut RaftIndexes {
        &mut self.indexes
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
    fn indexes(&mut self) -> &mut RaftIndexes {
        &mut self.indexes
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
    fn indexes(&mut self) -> &mut RaftIndexes {
        &mut self.indexes
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
    fn indexes(&mut self) -> &mut RaftIndexes {
        &mut self.indexes
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
