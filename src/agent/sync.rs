//! Anti-entropy: makes the catalog's entries for this node equal to the agent's local state.
//!
//! A pass compares local services and checks with the catalog and writes only the difference:
//! registrations for what is missing or different, deregistrations for what the agent does not
//! know (except `serfHealth`, which belongs to the leader). Passes run at once after a local
//! change and every `ae_interval` (plus a random stagger) to repair changes made behind the
//! agent's back. A failed pass keeps local state and retries with backoff.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use rand::Rng;

use super::Agent;
use crate::rpc::RpcError;
use crate::types::{
    ApplyError, Check, Command, CommandResult, DeregisterRequest, Node, RaftIndexes,
    RegisterRequest, Service,
};

/// How often, at most, critical services are checked for `deregister_critical_service_after`
/// (Consul's reaper interval).
const REAP_EVERY: Duration = Duration::from_secs(30);

/// The leader maintains this check from membership; anti-entropy leaves it alone.
const SERF_HEALTH: &str = "serfHealth";
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(15);

/// When each check's output was last written to the catalog, to rate-limit output-only
/// changes (Consul's `check_update_interval`).
type OutputSynced = HashMap<String, Instant>;

/// Why a pass failed: the write did not commit, or the catalog refused it. Either way the pass
/// is logged and retried, so nothing branches on which.
#[derive(Debug, thiserror::Error)]
enum SyncError {
    #[error(transparent)]
    Rpc(#[from] RpcError),
    #[error("the catalog refused the write: {0}")]
    Refused(#[from] ApplyError),
}

pub async fn run(agent: Arc<Agent>) {
    let mut retry = RETRY_MIN;
    let mut output_synced = OutputSynced::new();
    loop {
        agent.reap_critical_services();
        let wait = match sync_once(&agent, &mut output_synced).await {
            Ok(()) => {
                retry = RETRY_MIN;
                let interval = agent.config.ae_interval;
                let stagger_ms = (interval.as_millis() / 8) as u64;
                let full_sync =
                    interval + Duration::from_millis(rand::thread_rng().gen_range(0..=stagger_ms));
                full_sync.min(REAP_EVERY)
            }
            Err(error) => {
                tracing::warn!(%error, retry_in_ms = retry.as_millis() as u64, "anti-entropy sync failed");
                let wait = retry;
                retry = (retry * 2).min(RETRY_MAX);
                wait
            }
        };
        tokio::select! {
            _ = agent.tasks.shutdown().cancelled() => return,
            _ = agent.sync_needed.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// The node record this agent keeps in the catalog.
pub fn node_record(agent: &Agent) -> Node {
    crate::agent::node_record(&agent.config, &agent.node_id)
}

fn without_indexes<T: Clone>(value: &T, clear: fn(&mut T)) -> T {
    let mut copy = value.clone();
    clear(&mut copy);
    copy
}

async fn write(agent: &Agent, command: Command) -> Result<(), SyncError> {
    match agent.cluster.write(command).await? {
        (_, CommandResult::Catalog(Err(error))) => Err(error.into()),
        _ => Ok(()),
    }
}

async fn sync_once(agent: &Agent, output_synced: &mut OutputSynced) -> Result<(), SyncError> {
    let node = node_record(agent);
    let name = node.name.clone();
    let (local_services, local_checks) = agent.services_and_checks();
    let tables = agent.cluster.snapshot();

    let node_matches = tables.node(&name).is_some_and(|known| {
        without_indexes(known, |n| n.indexes = RaftIndexes::default()) == node
    });
    if !node_matches {
        let request = RegisterRequest {
            node: node.clone(),
            skip_node_update: false,
            service: None,
            checks: Vec::new(),
        };
        write(agent, Command::CatalogRegister(Box::new(request))).await?;
    }

    let clear_service: fn(&mut Service) = |s| s.indexes = RaftIndexes::default();
    let clear_check: fn(&mut Check) = |c| c.indexes = RaftIndexes::default();
    // One map of the catalog's entries per pass, so a pass is linear in the node's services.
    let catalog_services: HashMap<&str, &Service> = tables
        .node_services(&name)
        .map(|service| (service.id.as_str(), service))
        .collect();
    let catalog_checks: HashMap<&str, &Check> = tables
        .node_checks(&name)
        .map(|check| (check.check_id.as_str(), check))
        .collect();
    for service in &local_services {
        let in_catalog = catalog_services
            .get(service.id.as_str())
            .map(|known| without_indexes(*known, clear_service));
        if in_catalog.as_ref() != Some(service) {
            let request = RegisterRequest {
                node: node.clone(),
                skip_node_update: true,
                service: Some(service.clone()),
                checks: Vec::new(),
            };
            write(agent, Command::CatalogRegister(Box::new(request))).await?;
        }
    }
    for check in &local_checks {
        let in_catalog = catalog_checks
            .get(check.check_id.as_str())
            .map(|known| without_indexes(*known, clear_check));
        if in_catalog.as_ref() != Some(check) {
            // A change of output alone waits for check_update_interval; anything else (status
            // above all) goes at once.
            let output_only = in_catalog.as_ref().is_some_and(|known| {
                let mut same_output = known.clone();
                same_output.output = check.output.clone();
                &same_output == check
            });
            let recently = output_synced
                .get(&check.check_id)
                .is_some_and(|at| at.elapsed() < agent.config.check_update_interval);
            if output_only && recently {
                continue;
            }
            output_synced.insert(check.check_id.clone(), Instant::now());
            let request = RegisterRequest {
                node: node.clone(),
                skip_node_update: true,
                service: None,
                checks: vec![check.clone()],
            };
            write(agent, Command::CatalogRegister(Box::new(request))).await?;
        }
    }

    let local_service_ids: std::collections::HashSet<&str> =
        local_services.iter().map(|s| s.id.as_str()).collect();
    let local_check_ids: std::collections::HashSet<&str> =
        local_checks.iter().map(|c| c.check_id.as_str()).collect();
    let unknown_services: Vec<String> = catalog_services
        .keys()
        .filter(|id| !local_service_ids.contains(**id))
        .map(|id| id.to_string())
        .collect();
    for service_id in unknown_services {
        tracing::info!(service_id = %service_id, "anti-entropy: deregistering a service this agent does not have");
        let request = DeregisterRequest {
            node: name.clone(),
            service_id: Some(service_id),
            check_id: None,
        };
        write(agent, Command::CatalogDeregister(request)).await?;
    }
    output_synced.retain(|id, _| local_check_ids.contains(id.as_str()));
    let unknown_checks: Vec<String> = catalog_checks
        .keys()
        .filter(|id| **id != SERF_HEALTH && !local_check_ids.contains(**id))
        .map(|id| id.to_string())
        .collect();
    for check_id in unknown_checks {
        let request = DeregisterRequest {
            node: name.clone(),
            service_id: None,
            check_id: Some(check_id),
        };
        write(agent, Command::CatalogDeregister(request)).await?;
    }
    Ok(())
}
