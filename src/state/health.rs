//! The aggregated health of one service instance, as every reader of the catalog counts it:
//! the worst of its own checks and its node's (maintenance counts as critical).

use super::Tables;
use crate::types::HealthStatus;

/// How bad a status is, for taking the worst of several.
pub fn severity(status: HealthStatus) -> u8 {
    match status {
        HealthStatus::Passing => 0,
        HealthStatus::Warning => 1,
        HealthStatus::Critical | HealthStatus::Maintenance => 2,
    }
}

/// The worst of `statuses`; `Passing` when there are none.
pub fn worst(statuses: impl Iterator<Item = HealthStatus>) -> HealthStatus {
    statuses
        .max_by_key(|status| severity(*status))
        .unwrap_or(HealthStatus::Passing)
}

/// Whether an instance this healthy answers a lookup: passing always, warning unless only
/// passing ones may (DNS `only_passing`, a prepared query's `OnlyPassing`), critical never.
pub fn answers(health: HealthStatus, only_passing: bool) -> bool {
    match health {
        HealthStatus::Passing => true,
        HealthStatus::Warning => !only_passing,
        HealthStatus::Critical | HealthStatus::Maintenance => false,
    }
}

impl Tables {
    /// The worst status among the instance's checks and its node's checks; `Passing` when
    /// there are none.
    pub fn instance_health(&self, node: &str, service_id: &str) -> HealthStatus {
        worst(
            self.instance_checks(node, service_id)
                .map(|check| check.status),
        )
    }
}

/// Every instance's aggregated health in one snapshot, for readers that ask about many
/// instances per request (DNS): built in one pass over the checks, then two map lookups per
/// instance instead of a scan of its node's checks. Only statuses worse than passing are kept.
#[derive(Debug, Default)]
pub struct HealthIndex {
    /// Node -> the worst node-level status, and per service id the worst service status.
    nodes: std::collections::HashMap<String, NodeHealth>,
}

#[derive(Debug, Default)]
struct NodeHealth {
    node: Option<HealthStatus>,
    services: std::collections::HashMap<String, HealthStatus>,
}

fn worse(current: Option<HealthStatus>, status: HealthStatus) -> HealthStatus {
    match current {
        Some(current) if severity(current) >= severity(status) => current,
        _ => status,
    }
}

impl HealthIndex {
    pub fn build(tables: &Tables) -> HealthIndex {
        let mut index = HealthIndex::default();
        for check in tables.all_checks() {
            if check.status == HealthStatus::Passing {
                continue;
            }
            let node = index.nodes.entry(check.node.clone()).or_default();
            if check.service_id.is_empty() {
                node.node = Some(worse(node.node, check.status));
            } else {
                let current = node.services.get(&check.service_id).copied();
                node.services
                    .insert(check.service_id.clone(), worse(current, check.status));
            }
        }
        index
    }

    /// The same answer as `Tables::instance_health` for the snapshot this was built from.
    pub fn instance_health(&self, node: &str, service_id: &str) -> HealthStatus {
        let Some(health) = self.nodes.get(node) else {
            return HealthStatus::Passing;
        };
        let service = health.services.get(service_id).copied();
        match (health.node, service) {
            (None, None) => HealthStatus::Passing,
            (Some(status), None) | (None, Some(status)) => status,
            (Some(node), Some(service)) => worse(Some(node), service),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Check, Command, Node, RegisterRequest, Service};

    #[test]
    fn the_index_agrees_with_instance_health() {
        let store = crate::state::Store::new();
        let statuses = [
            HealthStatus::Passing,
            HealthStatus::Warning,
            HealthStatus::Critical,
            HealthStatus::Maintenance,
        ];
        let mut commands = Vec::new();
        for (n, node_status) in statuses.iter().enumerate() {
            for (s, service_status) in statuses.iter().enumerate() {
                let check = |id: String, service_id: String, status: HealthStatus| Check {
                    node: format!("n{n}"),
                    check_id: id,
                    name: "c".into(),
                    status,
                    notes: String::new(),
                    output: String::new(),
                    service_id,
                    service_name: String::new(),
                    service_tags: Vec::new(),
                    check_type: String::new(),
                    interval: String::new(),
                    timeout: String::new(),
                    indexes: Default::default(),
                };
                commands.push(Command::CatalogRegister(Box::new(RegisterRequest {
                    node: Node {
                        name: format!("n{n}"),
                        address: "10.0.0.1".into(),
                        ..Node::default()
                    },
                    skip_node_update: false,
                    service: Some(Service {
                        id: format!("s{s}"),
                        name: "svc".into(),
                        ..Service::default()
                    }),
                    checks: vec![
                        check("node".into(), String::new(), *node_status),
                        check(format!("svc{s}"), format!("s{s}"), *service_status),
                    ],
                })));
            }
        }
        store.apply_batch(commands.iter().map(|command| (1, Some(command))));
        let tables = store.snapshot();
        let index = HealthIndex::build(&tables);
        for n in 0..statuses.len() {
            for s in 0..statuses.len() {
                let (node, service) = (format!("n{n}"), format!("s{s}"));
                assert_eq!(
                    severity(index.instance_health(&node, &service)),
                    severity(tables.instance_health(&node, &service)),
                    "{node}/{service}"
                );
            }
        }
    }
}
