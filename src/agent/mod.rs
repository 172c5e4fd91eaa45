//! The local agent: the services and checks registered on this node, the check runners, and
//! anti-entropy, which keeps the catalog's view of this node equal to the agent's.
//!
//! The agent is the source of truth for its node. Registrations (from config files or
//! `/v1/agent/*/register`) change local state and wake the sync task, which writes the
//! difference to the catalog through Raft; a periodic full sync repairs anything changed behind
//! the agent's back.
//!
//! Architecture invariant: local state sits behind one mutex that is never held across an
//! await; runners and the sync task read it, change it, and let go.

pub mod events;
pub mod leaf;
mod persist;
pub mod probe;
mod runner;
mod sync;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde_json::Value;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::api::definition::{self, DefinitionPolicy};
use crate::api::DecodeError;
use crate::config::{ConfigError, LoadOptions, RuntimeConfig};
use crate::rpc::Cluster;
use crate::tasks::Tasks;
use crate::types::agent::{CheckDefinition, CheckKind, ServiceDefinition};
use crate::types::duration::format_go_duration;
use crate::types::{Check, HealthStatus, RaftIndexes, Service};

/// Why the agent refused a registration or a change to its local state. Callers branch on the
/// kind: the HTTP edge answers a refused definition with 400, an update of a check that is not
/// a TTL check with 404, and a change the agent made itself that failed (a reload, a
/// maintenance check) with 500.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A service or check definition that does not parse or breaks one of Consul's rules.
    #[error(transparent)]
    Definition(#[from] DecodeError),
    /// A check names a service this agent does not run.
    #[error("ServiceID {0:?} does not exist")]
    UnknownService(String),
    /// A `sidecar_service` without a port while port assignment is turned off.
    #[error("no port provided for sidecar_service and auto-assignment disabled in config")]
    SidecarPortsDisabled,
    /// A `sidecar_service` without a port, and every port of the range is taken.
    #[error(
        "no port provided for sidecar_service and none left in the configured range [{min}, {max}]"
    )]
    SidecarPortsExhausted { min: u16, max: u16 },
    /// An update for a check this agent does not have.
    #[error("Unknown check ID {0:?}. Ensure that the check ID is passed, not the check name.")]
    UnknownCheck(String),
    /// A TTL update for a check that this agent does not run as a TTL check.
    #[error("CheckID {0:?} does not have associated TTL")]
    NotTtlCheck(String),
    /// A definition registered over the API could not be stored for restarts, or the stored
    /// ones could not be read back.
    #[error("{0}")]
    Persist(String),
    /// A definition stored by an earlier run no longer parses (at start).
    #[error("{}: {source}", path.display())]
    Restored { path: PathBuf, source: DecodeError },
    /// A reload could not load the config files.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A reload's certificate files could not be used; the running ones stay.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// A change the agent made itself was refused (a reload's definitions, a maintenance
    /// check): whatever refused it, the client did not send it.
    #[error(transparent)]
    Internal(Box<AgentError>),
}

impl AgentError {
    fn internal(error: AgentError) -> AgentError {
        AgentError::Internal(Box::new(error))
    }
}

/// A check this agent runs, with its current result.
struct LocalCheck {
    definition: CheckDefinition,
    status: HealthStatus,
    output: String,
    /// Stops this check's runner when the check is removed or replaced.
    runner: CancellationToken,
    /// For TTL checks: when the check goes critical unless updated first.
    ttl_deadline: Option<Instant>,
    /// Wakes the runner: a TTL runner when the deadline moves, a probe runner to probe now.
    wake: Arc<Notify>,
    /// Since when the check has been critical, for `deregister_critical_service_after`.
    critical_since: Option<Instant>,
}

impl LocalCheck {
    fn set(&mut self, status: HealthStatus, output: String) {
        if status != HealthStatus::Critical {
            self.critical_since = None;
        } else if self.critical_since.is_none() {
            self.critical_since = Some(Instant::now());
        }
        self.status = status;
        self.output = output;
    }
}

#[derive(Default)]
struct LocalState {
    services: BTreeMap<String, Service>,
    checks: BTreeMap<String, LocalCheck>,
    /// Ids defined by config files, which `reload` owns; the rest came from the API.
    config_services: BTreeSet<String>,
    config_checks: BTreeSet<String>,
}

pub struct Agent {
    config: Arc<RuntimeConfig>,
    /// How the config was loaded, to load it again on reload.
    load_options: LoadOptions,
    persisted: persist::Persisted,
    node_id: String,
    cluster: Cluster,
    /// The agent's TLS, whose certificate files a reload reads again.
    tls: std::sync::OnceLock<Arc<crate::tls::Tls>>,
    state: Mutex<LocalState>,
    /// Wakes the sync task after a local change.
    sync_needed: Notify,
    /// Bumped on every local change; hash-blocking reads of `/v1/agent/service/:id` wait on it.
    changes: tokio::sync::watch::Sender<u64>,
    tasks: Tasks,
}

impl Agent {
    /// Creates the agent, registers the services and checks from config, and starts the sync
    /// task; every task it starts runs under `tasks`.
    pub fn start(
        config: Arc<RuntimeConfig>,
        load_options: LoadOptions,
        data_dir: &Path,
        node_id: String,
        cluster: Cluster,
        tasks: Tasks,
    ) -> Result<Arc<Agent>, AgentError> {
        let agent = Arc::new(Agent {
            config: config.clone(),
            load_options,
            persisted: persist::Persisted::new(data_dir),
            tls: std::sync::OnceLock::new(),
            node_id,
            cluster,
            state: Mutex::new(LocalState::default()),
            sync_needed: Notify::new(),
            changes: tokio::sync::watch::Sender::new(0),
            tasks,
        });
        if config.server_mode {
            // Servers carry the `consul` service, so anti-entropy keeps it rather than
            // deleting it as unknown.
            agent.add_service(ServiceDefinition {
                service: Service {
                    id: "consul".into(),
                    name: "consul".into(),
                    port: config.ports.server.unwrap_or(8300),
                    ..Service::default()
                },
                checks: Vec::new(),
                sidecar: None,
            })?;
        }
        agent.apply_config(&config.services, &config.checks)?;
        // Definitions registered over the API before a restart come back as they were sent.
        let restored = |path: PathBuf| move |source| AgentError::Restored { path, source };
        let services = agent
            .persisted
            .load(persist::Kind::Service)
            .map_err(AgentError::Persist)?;
        for (path, value) in services {
            let parsed = definition::service(value, agent.policy()).map_err(restored(path))?;
            agent.add_service(parsed)?;
        }
        let checks = agent
            .persisted
            .load(persist::Kind::Check)
            .map_err(AgentError::Persist)?;
        for (path, value) in checks {
            let parsed = definition::check(value, agent.policy()).map_err(restored(path))?;
            agent.add_check(parsed)?;
        }
        agent
            .tasks
            .spawn("agent.anti_entropy", sync::run(agent.clone()));
        Ok(agent)
    }

    /// Records a local change: wakes anti-entropy and hash-blocking readers.
    fn changed(&self) {
        self.sync_needed.notify_one();
        self.changes.send_modify(|version| *version += 1);
    }

    /// A receiver that sees every later local change.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn shutdown_token(&self) -> &CancellationToken {
        self.tasks.shutdown()
    }

    /// Whether a service registered here needs `service`'s leaf certificate: an instance of
    /// it, or a connect proxy for it.
    pub fn needs_leaf(&self, service: &str) -> bool {
        self.state().services.values().any(|local| {
            local.name == service
                || local
                    .proxy
                    .as_ref()
                    .is_some_and(|proxy| proxy.destination_service_name == service)
        })
    }

    fn policy(&self) -> DefinitionPolicy {
        // Everything the agent registers itself came over the API (now, or restored).
        DefinitionPolicy {
            enable_script_checks: self.config.enable_script_checks,
            remote: true,
        }
    }

    /// Makes the config-defined services and checks equal to `services` and `checks`: adds
    /// new ones, replaces changed ones, removes ones no longer defined, and leaves unchanged
    /// ones (and their check results) alone. API-registered definitions are not touched.
    fn apply_config(
        self: &Arc<Self>,
        services: &[ServiceDefinition],
        checks: &[CheckDefinition],
    ) -> Result<(), AgentError> {
        let (old_services, old_checks) = {
            let state = self.state();
            (state.config_services.clone(), state.config_checks.clone())
        };
        for id in &old_services {
            if !services
                .iter()
                .any(|definition| &definition.service.id == id)
            {
                self.remove_service(id);
            }
        }
        for id in &old_checks {
            if !checks.iter().any(|definition| &definition.id == id) {
                self.remove_check(id);
            }
        }
        for definition in services {
            if !self.has_service_definition(definition) {
                self.add_service(definition.clone())?;
            }
        }
        for definition in checks {
            if !self.has_check_definition(definition) {
                self.add_check(definition.clone())?;
            }
        }
        let mut state = self.state();
        state.config_services = services.iter().map(|d| d.service.id.clone()).collect();
        state.config_checks = checks.iter().map(|d| d.id.clone()).collect();
        Ok(())
    }

    fn has_service_definition(&self, definition: &ServiceDefinition) -> bool {
        let state = self.state();
        let same_service = state.services.get(&definition.service.id) == Some(&definition.service);
        let current: Vec<&CheckDefinition> = state
            .checks
            .values()
            .filter(|check| check.definition.service_id == definition.service.id)
            .map(|check| &check.definition)
            .collect();
        same_service
            && current.len() == definition.checks.len()
            && definition
                .checks
                .iter()
                .all(|check| current.contains(&check))
    }

    fn has_check_definition(&self, definition: &CheckDefinition) -> bool {
        self.state()
            .checks
            .get(&definition.id)
            .is_some_and(|check| &check.definition == definition)
    }

    /// Has `reload` read `tls`'s certificate files again too.
    pub fn reload_tls_with(&self, tls: Arc<crate::tls::Tls>) {
        let _ = self.tls.set(tls);
    }

    /// Re-reads the config files (SIGHUP, `/v1/agent/reload`, `concord reload`) and applies
    /// their services, checks and TLS certificate files (a bad file keeps the running ones
    /// and fails the reload). Other settings take effect at the next restart.
    pub fn reload(self: &Arc<Self>) -> Result<(), AgentError> {
        let loaded = crate::config::load(&self.load_options)?;
        for warning in &loaded.warnings {
            tracing::warn!("{warning}");
        }
        if let Some(tls) = self.tls.get() {
            tls.reload(&loaded.config.tls)?;
        }
        self.apply_config(&loaded.config.services, &loaded.config.checks)
            .map_err(AgentError::internal)?;
        tracing::info!("configuration reloaded");
        Ok(())
    }

    /// Registers a service sent over the API and keeps its definition for restarts.
    pub fn register_service(self: &Arc<Self>, value: Value) -> Result<String, AgentError> {
        let parsed = definition::service(value.clone(), self.policy())?;
        let id = parsed.service.id.clone();
        let name = parsed.service.name.clone();
        self.add_service(parsed)?;
        self.state().config_services.remove(&id);
        self.persisted
            .save(persist::Kind::Service, &id, &value)
            .map_err(AgentError::Persist)?;
        Ok(name)
    }

    /// Deregisters a service (from any source) and forgets its stored definition.
    pub fn deregister_service(&self, id: &str) -> bool {
        self.persisted.remove(persist::Kind::Service, id);
        self.state().config_services.remove(id);
        self.remove_service(id)
    }

    /// Registers a check sent over the API and keeps its definition for restarts.
    pub fn register_check(self: &Arc<Self>, value: Value) -> Result<(), AgentError> {
        let parsed = definition::check(value.clone(), self.policy())?;
        let id = parsed.id.clone();
        self.add_check(parsed)?;
        self.state().config_checks.remove(&id);
        self.persisted
            .save(persist::Kind::Check, &id, &value)
            .map_err(AgentError::Persist)
    }

    /// Deregisters a check (from any source) and forgets its stored definition.
    pub fn deregister_check(&self, id: &str) -> bool {
        self.persisted.remove(persist::Kind::Check, id);
        self.persisted.remove(persist::Kind::TtlState, id);
        self.state().config_checks.remove(id);
        self.remove_check(id)
    }

    fn state(&self) -> MutexGuard<'_, LocalState> {
        // Every change to local state is a single insert or remove, so a panic elsewhere
        // cannot leave it half-changed.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn node_name(&self) -> &str {
        &self.config.node_name
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Adds or replaces a service and the checks defined with it.
    pub fn add_service(
        self: &Arc<Self>,
        mut definition: ServiceDefinition,
    ) -> Result<(), AgentError> {
        if let Some(sidecar) = definition.sidecar.take() {
            let sidecar = self.assign_sidecar_port(*sidecar)?;
            self.add_service(sidecar)?;
        }
        let id = definition.service.id.clone();
        {
            let mut state = self.state();
            state.services.insert(id.clone(), definition.service);
            // A re-registration replaces the checks that came with the service.
            let stale: Vec<String> = state
                .checks
                .iter()
                .filter(|(check_id, check)| {
                    check.definition.service_id == id
                        && !definition.checks.iter().any(|new| &new.id == *check_id)
                })
                .map(|(check_id, _)| check_id.clone())
                .collect();
            for check_id in stale {
                if let Some(check) = state.checks.remove(&check_id) {
                    check.runner.cancel();
                }
            }
        }
        for check in definition.checks {
            self.add_check(check)?;
        }
        self.changed();
        Ok(())
    }

    /// Gives a sidecar without a port one from `ports.sidecar_min_port..=sidecar_max_port`:
    /// the port it had if it is being re-registered, else the lowest one no local service
    /// uses (Consul's rule), and points its listening check at that port.
    fn assign_sidecar_port(
        &self,
        mut sidecar: ServiceDefinition,
    ) -> Result<ServiceDefinition, AgentError> {
        if sidecar.service.port == 0 {
            let (min, max) = match (
                self.config.ports.sidecar_min_port,
                self.config.ports.sidecar_max_port,
            ) {
                (Some(min), Some(max)) => (min, max),
                _ => return Err(AgentError::SidecarPortsDisabled),
            };
            let state = self.state();
            let previous = state
                .services
                .get(&sidecar.service.id)
                .map(|service| service.port)
                .filter(|port| (min..=max).contains(port));
            let used: BTreeSet<u16> = state
                .services
                .values()
                .map(|service| service.port)
                .collect();
            sidecar.service.port = previous
                .or_else(|| (min..=max).find(|port| !used.contains(port)))
                .ok_or(AgentError::SidecarPortsExhausted { min, max })?;
        }
        let address = definition::sidecar_check_address(&sidecar.service);
        for check in &mut sidecar.checks {
            if let CheckKind::Tcp { address: dial } = &mut check.kind {
                if dial.ends_with(":0") {
                    *dial = format!("{address}:{}", sidecar.service.port);
                }
            }
        }
        Ok(sidecar)
    }

    /// Removes a service and its checks, and the sidecar registered with it; false when it was
    /// not registered.
    pub fn remove_service(&self, id: &str) -> bool {
        let sidecar_id = format!("{id}-sidecar-proxy");
        let is_its_sidecar = self
            .state()
            .services
            .get(&sidecar_id)
            .is_some_and(|sidecar| {
                sidecar
                    .proxy
                    .as_ref()
                    .is_some_and(|proxy| proxy.destination_service_id == id)
            });
        if is_its_sidecar {
            self.remove_service(&sidecar_id);
        }
        let mut state = self.state();
        let removed = state.services.remove(id).is_some();
        let checks: Vec<String> = state
            .checks
            .iter()
            .filter(|(_, check)| check.definition.service_id == id)
            .map(|(check_id, _)| check_id.clone())
            .collect();
        for check_id in checks {
            if let Some(check) = state.checks.remove(&check_id) {
                check.runner.cancel();
            }
        }
        drop(state);
        self.changed();
        removed
    }

    /// Adds or replaces a check and starts its runner.
    pub fn add_check(self: &Arc<Self>, definition: CheckDefinition) -> Result<(), AgentError> {
        let runner = self.tasks.shutdown().child_token();
        let wake = Arc::new(Notify::new());
        {
            let mut state = self.state();
            if !definition.service_id.is_empty()
                && !state.services.contains_key(&definition.service_id)
            {
                return Err(AgentError::UnknownService(definition.service_id.clone()));
            }
            let ttl_deadline = match definition.kind {
                CheckKind::Ttl { ttl } => Some(Instant::now() + ttl),
                _ => None,
            };
            let (status, output) = self
                .restored_ttl_state(&definition)
                .unwrap_or((definition.initial_status, String::new()));
            let critical_since = (status == HealthStatus::Critical).then(Instant::now);
            let check = LocalCheck {
                status,
                output,
                definition: definition.clone(),
                runner: runner.clone(),
                ttl_deadline,
                wake: wake.clone(),
                critical_since,
            };
            if let Some(previous) = state.checks.insert(definition.id.clone(), check) {
                previous.runner.cancel();
            }
        }
        runner::spawn(&self.tasks, self.clone(), definition, runner, wake);
        self.changed();
        Ok(())
    }

    /// Puts the node (`service_id` empty) or a local service into maintenance: adds its
    /// critical maintenance check, replacing an earlier one and its reason.
    pub fn enable_maintenance(
        self: &Arc<Self>,
        service_id: &str,
        reason: &str,
    ) -> Result<(), AgentError> {
        self.add_check(maintenance_check(service_id, reason))
            .map_err(AgentError::internal)
    }

    /// Runs the probes of `service_id`'s interval checks now instead of at their next
    /// interval. The xDS server calls it when a sidecar's Envoy has taken its listeners, so
    /// the sidecar's listening check passes within milliseconds of Envoy listening rather
    /// than up to one interval (10 s) later, during which its subset gets no traffic.
    pub fn probe_now(&self, service_id: &str) {
        for check in self.state().checks.values() {
            let probes = !matches!(
                check.definition.kind,
                CheckKind::Ttl { .. } | CheckKind::Alias { .. } | CheckKind::Maintenance
            );
            if probes && check.definition.service_id == service_id {
                check.wake.notify_one();
            }
        }
    }

    /// Removes a check; false when it was not registered.
    pub fn remove_check(&self, id: &str) -> bool {
        let removed = self.state().checks.remove(id);
        if let Some(check) = &removed {
            check.runner.cancel();
            self.changed();
        }
        removed.is_some()
    }

    /// Records a TTL check's status from `/v1/agent/check/{pass,warn,fail,update}` and pushes
    /// its deadline out by one TTL.
    pub fn update_ttl(
        &self,
        id: &str,
        status: HealthStatus,
        output: &str,
    ) -> Result<(), AgentError> {
        let mut state = self.state();
        let check = state
            .checks
            .get_mut(id)
            .ok_or_else(|| AgentError::UnknownCheck(id.to_string()))?;
        let CheckKind::Ttl { ttl } = check.definition.kind else {
            return Err(AgentError::NotTtlCheck(id.to_string()));
        };
        check.ttl_deadline = Some(Instant::now() + ttl);
        check.wake.notify_one();
        let output = truncate(output, check.definition.output_max_size);
        let changed = check.status != status || check.output != output;
        check.set(status, output.clone());
        drop(state);
        self.save_ttl_state(id, ttl, status, &output);
        if changed {
            self.changed();
        }
        Ok(())
    }

    /// Stores a TTL check's status with the wall-clock time it expires, so a restart within
    /// the TTL keeps it.
    fn save_ttl_state(
        &self,
        id: &str,
        ttl: std::time::Duration,
        status: HealthStatus,
        output: &str,
    ) {
        let expires = std::time::SystemTime::now() + ttl;
        let expires_ms = expires
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64);
        let record =
            serde_json::json!({"Status": status.as_str(), "Output": output, "Expires": expires_ms});
        if let Err(error) = self.persisted.save(persist::Kind::TtlState, id, &record) {
            tracing::warn!(%error, check_id = %id, "cannot persist TTL check state");
        }
    }

    /// The stored status of a TTL check, unless it has expired since.
    fn restored_ttl_state(&self, definition: &CheckDefinition) -> Option<(HealthStatus, String)> {
        if !matches!(definition.kind, CheckKind::Ttl { .. }) {
            return None;
        }
        let record = self
            .persisted
            .read(persist::Kind::TtlState, &definition.id)?;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64);
        if record["Expires"].as_u64()? <= now_ms {
            return None;
        }
        let status = HealthStatus::parse(record["Status"].as_str()?)?;
        Some((
            status,
            record["Output"].as_str().unwrap_or_default().to_string(),
        ))
    }

    /// Records a runner's result; wakes the sync task when anything changed.
    fn set_result(&self, id: &str, status: HealthStatus, output: String) {
        let mut state = self.state();
        let Some(check) = state.checks.get_mut(id) else {
            return;
        };
        if check.status == status && check.output == output {
            return;
        }
        check.set(status, output);
        drop(state);
        self.changed();
    }

    /// Deregisters services with a check that has been critical for longer than its
    /// `deregister_critical_service_after`.
    fn reap_critical_services(&self) {
        let now = Instant::now();
        let doomed: Vec<(String, String)> = self
            .state()
            .checks
            .values()
            .filter(|check| !check.definition.service_id.is_empty())
            .filter_map(|check| {
                let after = check.definition.deregister_critical_after?;
                let since = check.critical_since?;
                (now.duration_since(since) >= after).then(|| {
                    (
                        check.definition.service_id.clone(),
                        check.definition.id.clone(),
                    )
                })
            })
            .collect();
        for (service_id, check_id) in doomed {
            tracing::info!(service_id = %service_id, check_id = %check_id,
                "check critical past deregister_critical_service_after; deregistering the service");
            self.deregister_service(&service_id);
        }
    }

    fn current_status(&self, id: &str) -> Option<HealthStatus> {
        self.state().checks.get(id).map(|check| check.status)
    }

    fn ttl_deadline(&self, id: &str) -> Option<Instant> {
        self.state()
            .checks
            .get(id)
            .and_then(|check| check.ttl_deadline)
    }

    pub fn services(&self) -> Vec<Service> {
        self.state().services.values().cloned().collect()
    }

    pub fn service(&self, id: &str) -> Option<Service> {
        self.state().services.get(id).cloned()
    }

    /// The services registered with this agent as the agent API shows them: without the
    /// `consul` service a server carries only so anti-entropy keeps it in the catalog
    /// (Consul's agent API does not list it either).
    pub fn registered_services(&self) -> Vec<Service> {
        let mut services = self.services();
        services.retain(|service| !self.is_server_service(&service.id));
        services
    }

    /// `service`, as the agent API shows it (see `registered_services`).
    pub fn registered_service(&self, id: &str) -> Option<Service> {
        self.service(id)
            .filter(|service| !self.is_server_service(&service.id))
    }

    fn is_server_service(&self, id: &str) -> bool {
        self.config.server_mode && id == "consul"
    }

    /// This agent's checks, shaped as the catalog stores them.
    pub fn checks(&self) -> Vec<Check> {
        self.catalog_checks(&self.state())
    }

    /// Services and checks read under one lock, so every service check's service is among
    /// the services (two separate reads could see a check registered with its service in
    /// between, and the catalog refuses a check whose service it does not have).
    pub fn services_and_checks(&self) -> (Vec<Service>, Vec<Check>) {
        let state = self.state();
        let services = state.services.values().cloned().collect();
        (services, self.catalog_checks(&state))
    }

    fn catalog_checks(&self, state: &LocalState) -> Vec<Check> {
        state
            .checks
            .values()
            .map(|check| self.catalog_check(state, check))
            .collect()
    }

    fn catalog_check(&self, state: &LocalState, check: &LocalCheck) -> Check {
        let definition = &check.definition;
        let service = state.services.get(&definition.service_id);
        Check {
            node: self.config.node_name.clone(),
            check_id: definition.id.clone(),
            name: definition.name.clone(),
            status: check.status,
            notes: definition.notes.clone(),
            output: check.output.clone(),
            service_id: definition.service_id.clone(),
            service_name: service.map_or_else(String::new, |s| s.name.clone()),
            service_tags: service.map_or_else(Vec::new, |s| s.tags.clone()),
            check_type: definition.kind.type_name().to_string(),
            interval: if definition.interval.is_zero() {
                String::new()
            } else {
                format_go_duration(definition.interval)
            },
            timeout: format_go_duration(definition.timeout),
            indexes: RaftIndexes::default(),
        }
    }
}

/// Check id of node maintenance mode.
pub const NODE_MAINTENANCE: &str = "_node_maintenance";

/// Check id of a service's maintenance mode.
pub fn service_maintenance_id(service_id: &str) -> String {
    format!("_service_maintenance:{service_id}")
}

/// Whether a check id is a maintenance check.
pub fn is_maintenance(check_id: &str) -> bool {
    check_id == NODE_MAINTENANCE || check_id.starts_with("_service_maintenance:")
}

/// The check that puts the node (`service_id` empty) or a service in maintenance.
pub fn maintenance_check(service_id: &str, reason: &str) -> CheckDefinition {
    let (id, name, what) = if service_id.is_empty() {
        (
            NODE_MAINTENANCE.to_string(),
            "Node Maintenance Mode",
            "node",
        )
    } else {
        (
            service_maintenance_id(service_id),
            "Service Maintenance Mode",
            "service",
        )
    };
    let notes = if reason.is_empty() {
        format!(
            "Maintenance mode is enabled for this {what}, but no reason was provided. This is a \
             default message."
        )
    } else {
        reason.to_string()
    };
    CheckDefinition {
        id,
        name: name.to_string(),
        notes,
        service_id: service_id.to_string(),
        initial_status: HealthStatus::Critical,
        kind: CheckKind::Maintenance,
        interval: std::time::Duration::ZERO,
        timeout: std::time::Duration::ZERO,
        deregister_critical_after: None,
        success_before_passing: 0,
        failures_before_warning: 0,
        failures_before_critical: 0,
        output_max_size: 0,
    }
}

/// The node record an agent keeps in the catalog for itself.
pub fn node_record(config: &RuntimeConfig, node_id: &str) -> crate::types::Node {
    let address = config.advertise_addr.to_string();
    let mut meta = config.node_meta.clone();
    meta.insert("consul-network-segment".into(), String::new());
    let tagged_addresses = ["lan", "lan_ipv4", "wan", "wan_ipv4"]
        .into_iter()
        .map(|name| (name.to_string(), address.clone()))
        .collect();
    crate::types::Node {
        id: node_id.to_string(),
        name: config.node_name.clone(),
        address,
        datacenter: config.datacenter.clone(),
        tagged_addresses,
        meta,
        indexes: RaftIndexes::default(),
        locality: config.locality.clone(),
    }
}

/// Cuts `text` to at most `max` bytes at a character boundary.
fn truncate(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}
