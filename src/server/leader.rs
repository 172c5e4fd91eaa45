//! Duties of the Raft leader: keep this server's node and its `serfHealth` check in the
//! catalog, reconcile the LAN pool's members into it (`members`), bootstrap the CA and the configured config entries on taking office, prune
//! rotated-out roots, and reap KV tombstones once they are older than the tombstone TTL. It
//! wakes on the server's published leadership, not by polling Raft.
//!
//! The tombstone cut is chosen here (with a clock) and replicated as a command, so the FSM
//! stays deterministic.
//!
//! Every write here is `write_as_leader`: proposed only while this server leads, never
//! forwarded, so a server deposed midway through a duty cannot repeat what the new leader
//! does.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::config::RuntimeConfig;
use crate::gossip::{MemberEvent, Pool};
use crate::rpc::ServerRpc;
use crate::types::{Command, CommandResult, HealthStatus, RegisterRequest};

/// How long a deleted key's tombstone is kept (Consul's TombstoneTTL).
const TOMBSTONE_TTL: Duration = Duration::from_secs(15 * 60);
/// How often the leader records the KV index and reaps (Consul's granularity).
const TOMBSTONE_GRANULARITY: Duration = Duration::from_secs(30);
/// How soon a failed duty of taking office (self-registration, the CA) is tried again.
const DUTY_RETRY: Duration = Duration::from_millis(500);
/// A full reconciliation of members into the catalog runs this often besides on every member
/// event (Consul's `ReconcileInterval`).
const RECONCILE_INTERVAL: Duration = Duration::from_secs(60);

/// The leader keeps this server's node and its `serfHealth` check in the catalog; the agent's
/// anti-entropy owns everything else registered on the node.
fn self_registration(config: &RuntimeConfig, node_id: &str) -> RegisterRequest {
    RegisterRequest {
        node: crate::agent::node_record(config, node_id),
        skip_node_update: false,
        service: None,
        checks: vec![super::members::serf_check(
            &config.node_name,
            HealthStatus::Passing,
        )],
    }
}

pub async fn run(
    rpc: Arc<ServerRpc>,
    config: Arc<RuntimeConfig>,
    node_id: String,
    lan: Pool,
    shutdown: CancellationToken,
) {
    let mut member_events = lan.events();
    let mut reconcile_tick = tokio::time::interval(RECONCILE_INTERVAL);
    let mut reconciled = false;
    // Members the pool erased since the last complete pass, to deregister.
    let mut reaped = BTreeSet::new();
    let pool_started = Instant::now();
    let ca = &rpc.ca;
    let mut leadership = rpc.leadership();
    let mut registered_as_leader = false;
    let mut connect_ready = false;
    let mut kv_index_history: VecDeque<(Instant, u64)> = VecDeque::new();
    let mut tick = tokio::time::interval(TOMBSTONE_GRANULARITY);
    let mut autopilot = super::autopilot::Autopilot::default();
    let mut autopilot_seeded = false;
    let mut acl_ready = false;
    let mut health_tick = tokio::time::interval(super::autopilot::HEALTH_INTERVAL);
    loop {
        let leader = leadership.borrow_and_update().is_leader;
        if !leader {
            registered_as_leader = false;
            connect_ready = false;
            autopilot_seeded = false;
            acl_ready = false;
            kv_index_history.clear();
            rpc.set_autopilot_report(None);
        }
        if leader && !autopilot_seeded {
            autopilot_seeded = seed_autopilot(&rpc, &config).await;
        }
        if leader && !acl_ready {
            acl_ready = super::acl::init(&rpc, &config).await;
        }
        if leader && !registered_as_leader {
            let request = self_registration(&config, &node_id);
            match rpc
                .write_as_leader(Command::CatalogRegister(Box::new(request)))
                .await
            {
                Ok((_, CommandResult::Catalog(Ok(())))) => {
                    registered_as_leader = true;
                    tracing::info!(node = %config.node_name, "registered this server in the catalog");
                }
                Ok((_, result)) => tracing::warn!(?result, "self-registration was refused"),
                Err(error) => tracing::warn!(%error, "self-registration failed; will retry"),
            }
        }
        if leader && !connect_ready && config.connect_enabled {
            connect_ready = connect_duties(&rpc, &config).await;
        }
        if !leader {
            reconciled = false;
        } else if !reconciled {
            let scope = super::members::Scope {
                datacenter: &config.datacenter,
                leader_node: &config.node_name,
                reaped: &reaped,
                reap_unknown: pool_started.elapsed()
                    >= config.membership.gossip_lan.reconnect_timeout,
            };
            reconciled = reconcile_members(&rpc, &lan, &scope).await
                & reconcile_servers(&rpc, &lan, &config, &mut autopilot).await;
            if reconciled {
                reaped.clear();
            }
        } else if autopilot.pending() {
            reconcile_servers(&rpc, &lan, &config, &mut autopilot).await;
        }
        let unfinished = leader
            && (!registered_as_leader
                || !autopilot_seeded
                || !acl_ready
                || (config.connect_enabled && !connect_ready)
                || !reconciled
                || autopilot.pending());
        // A node written to the catalog after its member left or was reaped (its agent's last
        // anti-entropy pass landing after the leave) is reconciled at once, not a minute later.
        let nodes = vec![(
            crate::state::catalog::NODES_TOPIC.to_string(),
            crate::state::Match::Exact,
        )];
        let nodes_changed = rpc.store().watch(&nodes);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = leadership.changed() => if changed.is_err() { return },
            _ = nodes_changed.changed(), if leader => reconciled = false,
            event = member_events.recv() => {
                // Lagging only means several events at once; a full pass covers them.
                match event {
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    Ok(MemberEvent::Reaped(identity)) => {
                        reaped.insert(identity.name);
                    }
                    _ => {}
                }
                reconciled = false;
            }
            _ = reconcile_tick.tick() => reconciled = false,
            _ = tokio::time::sleep(DUTY_RETRY), if unfinished => {}
            _ = health_tick.tick(), if leader => {
                reconcile_servers(&rpc, &lan, &config, &mut autopilot).await;
            }
            _ = tick.tick() => {
                if leader {
                    reap_tombstones(&rpc, &mut kv_index_history).await;
                    super::acl::reap_expired(&rpc).await;
                    if let Err(error) = ca.prune().await {
                        tracing::warn!(%error, "pruning old CA roots failed");
                    }
                }
            }
        }
    }
}

/// One autopilot pass: publishes the servers' health and carries out the changes it decided;
/// whether every change went through.
async fn reconcile_servers(
    rpc: &ServerRpc,
    lan: &Pool,
    config: &RuntimeConfig,
    autopilot: &mut super::autopilot::Autopilot,
) -> bool {
    let members = lan.members().await;
    let heartbeat = crate::raft::heartbeat_interval(&config.raft);
    let raft = super::autopilot::RaftView::of(rpc.raft(), rpc, heartbeat);
    // Until the seeded configuration is applied here, the agent's own stanza stands in.
    let settings = rpc
        .store()
        .snapshot()
        .autopilot()
        .map_or_else(|| config.autopilot.clone(), |stored| (**stored).clone());
    let (report, changes) = autopilot.pass(
        &members,
        &config.datacenter,
        &raft,
        &settings,
        Instant::now(),
        std::time::SystemTime::now(),
    );
    rpc.set_autopilot_report(Some(report));
    let mut done = true;
    for change in changes {
        done &= super::autopilot::apply(rpc, change).await;
    }
    done
}

/// On taking office: seeds autopilot's configuration from this server's `autopilot` stanza
/// if the cluster has none yet (create-only, as Consul's first leader does). Returns whether
/// that is settled.
async fn seed_autopilot(rpc: &ServerRpc, config: &RuntimeConfig) -> bool {
    if rpc.store().snapshot().autopilot().is_some() {
        return true;
    }
    let command = Command::AutopilotSetConfig {
        config: config.autopilot.clone(),
        cas: Some(0),
    };
    match rpc.write_as_leader(command).await {
        Ok(_) => true,
        Err(error) => {
            tracing::warn!(%error, "seeding the autopilot configuration failed; will retry");
            false
        }
    }
}

/// One pass of `members::plan`; whether every write went through.
async fn reconcile_members(rpc: &ServerRpc, lan: &Pool, scope: &super::members::Scope<'_>) -> bool {
    let members = lan.members().await;
    let writes = super::members::plan(&members, &rpc.store().snapshot(), scope);
    for write in writes {
        let (node, change) = match &write {
            Command::CatalogRegister(request) => (
                request.node.name.clone(),
                format!("serfHealth {:?}", request.checks[0].status),
            ),
            Command::CatalogDeregister(request) => (request.node.clone(), "deregistered".into()),
            _ => (String::new(), String::new()),
        };
        match rpc.write_as_leader(write).await {
            Ok((_, CommandResult::Catalog(Ok(())))) => {
                tracing::info!(%node, %change, "member reconciled into the catalog")
            }
            Ok((_, CommandResult::Catalog(Err(refusal)))) => {
                tracing::warn!(%node, %refusal, "member reconciliation was refused");
            }
            Ok((_, result)) => {
                tracing::warn!(%node, ?result, "member reconciliation was refused");
            }
            Err(error) => {
                tracing::warn!(%node, %error, "member reconciliation failed; will retry");
                return false;
            }
        }
    }
    true
}

/// Records the current KV index, and reaps tombstones at or below the newest index recorded
/// at least `TOMBSTONE_TTL` ago.
async fn reap_tombstones(rpc: &ServerRpc, history: &mut VecDeque<(Instant, u64)>) {
    let tables = rpc.store().snapshot();
    history.push_back((Instant::now(), tables.table_index().kv));
    let mut cut = None;
    while let Some((recorded, index)) = history.front().copied() {
        if recorded.elapsed() < TOMBSTONE_TTL {
            break;
        }
        cut = Some(index);
        history.pop_front();
    }
    if let Some(up_to_index) = cut {
        if tables.tombstone_count() > 0 {
            if let Err(error) = rpc
                .write_as_leader(Command::ReapTombstones { up_to_index })
                .await
            {
                tracing::warn!(%error, "tombstone reaping failed; will retry");
            }
        }
    }
}

/// On taking office: bootstrap the CA if the cluster has none, then write the configured
/// bootstrap config entries that do not exist yet (create-only, so an operator's later edits
/// are never overwritten). Returns whether both are done.
async fn connect_duties(rpc: &ServerRpc, config: &RuntimeConfig) -> bool {
    if let Err(error) = rpc.ca.bootstrap(&config.ca_config).await {
        tracing::warn!(%error, "bootstrapping the CA failed; will retry");
        return false;
    }
    for json in &config.config_entries_bootstrap {
        let Some(map) = json.as_object() else {
            tracing::error!("config_entries.bootstrap: each entry must be an object");
            continue;
        };
        let entry = match crate::connect::entry::decode(map.clone()) {
            Ok(entry) => entry,
            Err(error) => {
                tracing::error!(%error, "config_entries.bootstrap: entry refused");
                continue;
            }
        };
        let (kind, name) = (entry.kind.clone(), entry.name.clone());
        let command = Command::ConfigEntrySet {
            entry: Box::new(entry),
            cas: Some(0),
        };
        if let Err(error) =
            crate::connect::graph::validate_change(&rpc.store().snapshot(), &command)
        {
            tracing::error!(%kind, %name, %error, "config_entries.bootstrap: entry refused");
            continue;
        }
        match rpc.write_as_leader(command).await {
            Ok((_, CommandResult::Cas(true))) => {
                tracing::info!(%kind, %name, "wrote bootstrap config entry")
            }
            Ok(_) => tracing::debug!(%kind, %name, "bootstrap config entry already exists"),
            Err(error) => {
                tracing::warn!(%error, "writing bootstrap config entries failed; will retry");
                return false;
            }
        }
    }
    true
}
