//! One task per check. Interval checks run their probe, pass the result through Consul's
//! thresholds (`success_before_passing`, `failures_before_warning`/`critical`) and record it;
//! TTL checks wait for their deadline and go critical unless an update moved it first. A probe
//! runs early when the agent is told the thing it probes has just come up (`probe_now`).

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::probe;
use super::Agent;
use crate::tasks::Tasks;
use crate::types::agent::{CheckDefinition, CheckKind};
use crate::types::HealthStatus;

pub fn spawn(
    tasks: &Tasks,
    agent: Arc<Agent>,
    definition: CheckDefinition,
    cancel: CancellationToken,
    wake: Arc<Notify>,
) {
    // Every runner selects on `cancel`, a child of the shutdown token.
    tasks.spawn_graceful("agent.check", async move {
        let probe = match &definition.kind {
            CheckKind::Maintenance => return,
            CheckKind::Alias { node, service } => {
                let (node, service) = (node.clone(), service.clone());
                return run_alias(agent, definition.id, node, service, cancel).await;
            }
            CheckKind::Ttl { .. } => None,
            kind => Some(kind.clone()),
        };
        match probe {
            Some(probe) => run_probe(agent, definition, probe, cancel, wake).await,
            None => run_ttl(agent, definition.id, cancel, wake).await,
        }
    });
}

/// Consul's flapping guards: how many consecutive results it takes to change state.
struct Thresholds {
    success_before_passing: u32,
    failures_before_warning: u32,
    failures_before_critical: u32,
    successes: u32,
    failures: u32,
}

impl Thresholds {
    fn new(definition: &CheckDefinition) -> Thresholds {
        Thresholds {
            success_before_passing: definition.success_before_passing,
            failures_before_warning: definition.failures_before_warning,
            failures_before_critical: definition.failures_before_critical,
            successes: 0,
            failures: 0,
        }
    }

    /// The status to record after observing `observed`, given the `current` one.
    fn judge(&mut self, observed: HealthStatus, current: HealthStatus) -> HealthStatus {
        if observed == HealthStatus::Passing {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            return if self.successes >= self.success_before_passing {
                HealthStatus::Passing
            } else {
                current
            };
        }
        self.successes = 0;
        self.failures = self.failures.saturating_add(1);
        if self.failures >= self.failures_before_critical {
            observed
        } else if self.failures >= self.failures_before_warning {
            HealthStatus::Warning
        } else {
            current
        }
    }
}

async fn run_probe(
    agent: Arc<Agent>,
    definition: CheckDefinition,
    probe: CheckKind,
    cancel: CancellationToken,
    probe_now: Arc<Notify>,
) {
    // A random first delay within the interval, so checks registered together do not all
    // fire together.
    let interval = definition.interval;
    let stagger = Duration::from_millis(
        rand::thread_rng().gen_range(0..=interval.as_millis().min(u128::from(u64::MAX)) as u64),
    );
    tokio::select! {
        _ = cancel.cancelled() => return,
        _ = tokio::time::sleep(stagger) => {}
        _ = probe_now.notified() => {}
    }
    let mut thresholds = Thresholds::new(&definition);
    loop {
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            result = probe::run(&probe, definition.timeout, definition.output_max_size) => result,
        };
        let Some(current) = agent.current_status(&definition.id) else {
            return;
        };
        let status = thresholds.judge(result.status, current);
        agent.set_result(&definition.id, status, result.output);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
            _ = probe_now.notified() => {}
        }
    }
}

async fn run_ttl(agent: Arc<Agent>, id: String, cancel: CancellationToken, touched: Arc<Notify>) {
    loop {
        let Some(deadline) = agent.ttl_deadline(&id) else {
            return;
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = touched.notified() => continue,
            _ = tokio::time::sleep_until(deadline) => {}
        }
        // Only expire if no update moved the deadline while this task slept.
        if agent.ttl_deadline(&id) == Some(deadline) {
            agent.set_result(&id, HealthStatus::Critical, "TTL expired".into());
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = touched.notified() => {}
            }
        }
    }
}

/// Keeps an alias check's status equal to the aggregate health of the aliased service (its
/// own checks and its node's) or node, as the catalog has it. It wakes on the narrowest topic
/// that every relevant change touches: the aliased service's name once that service exists
/// (its checks and its node's checks touch it), the node's topic otherwise. Watching the node
/// for every alias would wake all of a node's sidecars' aliases on any write to the node.
async fn run_alias(
    agent: Arc<Agent>,
    id: String,
    node: String,
    service: String,
    cancel: CancellationToken,
) {
    use crate::state::catalog::{node_topic, service_topic};
    let node = if node.is_empty() {
        agent.node_name().to_string()
    } else {
        node
    };
    let cluster = agent.cluster.clone();
    let mut topic = node_topic(&node);
    loop {
        let guard = cluster.watch(&[(topic.clone(), crate::state::Match::Exact)]);
        let tables = cluster.snapshot();
        let (status, output) = alias_status(&tables, &node, &service, &id);
        agent.set_result(&id, status, output);
        let wanted = match tables.service(&node, &service) {
            Some(aliased) if !service.is_empty() => service_topic(&aliased.name),
            _ => node_topic(&node),
        };
        if wanted != topic {
            // Re-register on the right topic and look again, so nothing in between is missed.
            topic = wanted;
            continue;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = guard.changed() => {}
        }
    }
}

fn alias_status(
    tables: &crate::state::Tables,
    node: &str,
    service: &str,
    own_id: &str,
) -> (HealthStatus, String) {
    if tables.node(node).is_none() {
        return (HealthStatus::Critical, format!("Node {node:?} not found"));
    }
    if !service.is_empty() && tables.service(node, service).is_none() {
        return (
            HealthStatus::Critical,
            format!("Service {service:?} not found on node {node:?}"),
        );
    }
    let checks: Box<dyn Iterator<Item = &crate::types::Check>> = if service.is_empty() {
        Box::new(tables.node_checks(node))
    } else {
        Box::new(tables.instance_checks(node, service))
    };
    let worst = checks
        .filter(|check| check.check_id != own_id)
        .map(|check| check.status)
        .max();
    match worst {
        None | Some(HealthStatus::Passing) => (HealthStatus::Passing, "All checks passing.".into()),
        Some(status) => (
            status,
            format!(
                "Aliased {} has {} checks",
                if service.is_empty() {
                    "node"
                } else {
                    "service"
                },
                status.as_str()
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thresholds(passing: u32, warning: u32, critical: u32) -> Thresholds {
        Thresholds {
            success_before_passing: passing,
            failures_before_warning: warning,
            failures_before_critical: critical,
            successes: 0,
            failures: 0,
        }
    }

    #[test]
    fn defaults_follow_every_result() {
        let mut t = thresholds(0, 0, 0);
        assert_eq!(
            t.judge(HealthStatus::Passing, HealthStatus::Critical),
            HealthStatus::Passing
        );
        assert_eq!(
            t.judge(HealthStatus::Critical, HealthStatus::Passing),
            HealthStatus::Critical
        );
        assert_eq!(
            t.judge(HealthStatus::Warning, HealthStatus::Critical),
            HealthStatus::Warning
        );
    }

    #[test]
    fn thresholds_hold_the_state_until_enough_results_agree() {
        let mut t = thresholds(2, 1, 3);
        let mut current = HealthStatus::Critical;
        current = t.judge(HealthStatus::Passing, current);
        assert_eq!(current, HealthStatus::Critical, "one success is not enough");
        current = t.judge(HealthStatus::Passing, current);
        assert_eq!(current, HealthStatus::Passing);
        current = t.judge(HealthStatus::Critical, current);
        assert_eq!(current, HealthStatus::Warning, "first failure only warns");
        current = t.judge(HealthStatus::Critical, current);
        assert_eq!(current, HealthStatus::Warning);
        current = t.judge(HealthStatus::Critical, current);
        assert_eq!(current, HealthStatus::Critical);
    }
}
