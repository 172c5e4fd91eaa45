//! The leader keeps the catalog in step with the LAN pool, as Consul's `reconcileMember`: an
//! alive member's node is registered with a passing `serfHealth` check ("Serf Health Status"),
//! a failed member's `serfHealth` goes critical, which takes every service on it out of
//! passing health queries and DNS.
//!
//! `plan` decides from the members and the catalog alone, so it is tested without a cluster;
//! it writes nothing that is already so, which keeps a full pass cheap.

use crate::gossip::{Member, MemberStatus};
use crate::state::Tables;
use crate::types::{Check, HealthStatus, Node, RaftIndexes, RegisterRequest};

pub const SERF_CHECK: &str = "serfHealth";
const SERF_CHECK_NAME: &str = "Serf Health Status";
const ALIVE_OUTPUT: &str = "Agent alive and reachable";
const FAILED_OUTPUT: &str = "Agent not live or unreachable";

fn serf_check(node: &str, status: HealthStatus) -> Check {
    Check {
        node: node.to_string(),
        check_id: SERF_CHECK.into(),
        name: SERF_CHECK_NAME.into(),
        status,
        notes: String::new(),
        output: match status {
            HealthStatus::Passing => ALIVE_OUTPUT,
            _ => FAILED_OUTPUT,
        }
        .into(),
        service_id: String::new(),
        service_name: String::new(),
        service_tags: Vec::new(),
        check_type: String::new(),
        interval: String::new(),
        timeout: String::new(),
        indexes: RaftIndexes::default(),
    }
}

/// The registrations that bring the catalog in line with `members` of `datacenter`.
pub fn plan(members: &[Member], tables: &Tables, datacenter: &str) -> Vec<RegisterRequest> {
    let mut writes = Vec::new();
    for member in members {
        let identity = &member.identity;
        if identity.tag("dc") != datacenter || identity.name.is_empty() {
            continue;
        }
        let name = identity.name.as_str();
        let address = identity.addr.ip().to_string();
        let id = identity.tag("id").to_string();
        let known = tables.node(name);
        let serf = tables
            .node_checks(name)
            .find(|check| check.check_id == SERF_CHECK)
            .map(|check| check.status);
        match member.status {
            MemberStatus::Alive => {
                let current = known.is_some_and(|node| node.address == address && node.id == id);
                if current && serf == Some(HealthStatus::Passing) {
                    continue;
                }
                // Keep what the node's own agent registered (tagged addresses, meta); the
                // pool only knows its id and address.
                let node = match known {
                    Some(node) => Node {
                        id,
                        address,
                        indexes: RaftIndexes::default(),
                        ..node.clone()
                    },
                    None => Node {
                        id,
                        name: name.to_string(),
                        address,
                        datacenter: datacenter.to_string(),
                        tagged_addresses: Default::default(),
                        meta: Default::default(),
                        indexes: RaftIndexes::default(),
                    },
                };
                writes.push(RegisterRequest {
                    node,
                    skip_node_update: current,
                    service: None,
                    checks: vec![serf_check(name, HealthStatus::Passing)],
                });
            }
            MemberStatus::Failed => {
                // A failed member the catalog never had stays out of it (as Consul).
                let Some(node) = known else { continue };
                if serf == Some(HealthStatus::Critical) {
                    continue;
                }
                writes.push(RegisterRequest {
                    node: Node {
                        indexes: RaftIndexes::default(),
                        ..node.clone()
                    },
                    skip_node_update: true,
                    service: None,
                    checks: vec![serf_check(name, HealthStatus::Critical)],
                });
            }
        }
    }
    writes
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;

    use super::*;
    use crate::gossip::NodeIdentity;
    use crate::types::Command;

    fn member(name: &str, ip: &str, status: MemberStatus) -> Member {
        Member {
            identity: NodeIdentity {
                name: name.into(),
                addr: SocketAddr::new(ip.parse().unwrap(), 8301),
                started: 1,
                tags: BTreeMap::from([
                    ("dc".to_string(), "dc1".to_string()),
                    ("id".to_string(), format!("id-{name}")),
                ]),
            },
            status,
        }
    }

    fn apply(tables: &Tables, writes: Vec<RegisterRequest>) -> Tables {
        let mut tables = tables.clone();
        for write in writes {
            let (next, result) = tables.proposed(&Command::CatalogRegister(Box::new(write)));
            assert!(
                matches!(result, crate::types::CommandResult::Catalog(Ok(()))),
                "{result:?}"
            );
            tables = next;
        }
        tables
    }

    fn serf_status(tables: &Tables, node: &str) -> Option<HealthStatus> {
        tables
            .node_checks(node)
            .find(|check| check.check_id == SERF_CHECK)
            .map(|check| check.status)
    }

    #[test]
    fn alive_members_are_registered_once_and_failed_ones_go_critical() {
        let tables = Tables::default();
        let members = vec![
            member("c1", "127.0.0.3", MemberStatus::Alive),
            member("c2", "127.0.0.4", MemberStatus::Alive),
            member("gone", "127.0.0.9", MemberStatus::Failed),
        ];
        let writes = plan(&members, &tables, "dc1");
        assert_eq!(
            writes.len(),
            2,
            "the failed member was never in the catalog"
        );
        let tables = apply(&tables, writes);
        assert_eq!(
            tables.node("c1").map(|n| n.address.as_str()),
            Some("127.0.0.3")
        );
        assert_eq!(tables.node("c1").map(|n| n.id.as_str()), Some("id-c1"));
        assert_eq!(serf_status(&tables, "c2"), Some(HealthStatus::Passing));
        assert!(tables.node("gone").is_none());
        assert!(
            plan(&members, &tables, "dc1").is_empty(),
            "nothing left to do"
        );

        let members = vec![
            member("c1", "127.0.0.3", MemberStatus::Failed),
            member("c2", "127.0.0.4", MemberStatus::Alive),
        ];
        let writes = plan(&members, &tables, "dc1");
        assert_eq!(writes.len(), 1);
        assert!(writes[0].skip_node_update);
        let tables = apply(&tables, writes);
        assert_eq!(serf_status(&tables, "c1"), Some(HealthStatus::Critical));
        let output = tables
            .node_checks("c1")
            .find(|check| check.check_id == SERF_CHECK)
            .map(|check| check.output.clone());
        assert_eq!(output.as_deref(), Some(FAILED_OUTPUT));
        assert!(plan(&members, &tables, "dc1").is_empty());

        // Back alive: passing again, node kept.
        let members = vec![member("c1", "127.0.0.3", MemberStatus::Alive)];
        let tables = apply(&tables, plan(&members, &tables, "dc1"));
        assert_eq!(serf_status(&tables, "c1"), Some(HealthStatus::Passing));
    }

    #[test]
    fn a_new_address_updates_the_node_but_keeps_its_agents_metadata() {
        let tables = Tables::default();
        let mut meta_node = apply(
            &tables,
            plan(
                &[member("c1", "127.0.0.3", MemberStatus::Alive)],
                &tables,
                "dc1",
            ),
        );
        // The node's agent adds its metadata.
        let mut node = meta_node.node("c1").cloned().unwrap();
        node.meta.insert("rack".into(), "r1".into());
        meta_node = apply(
            &meta_node,
            vec![RegisterRequest {
                node,
                skip_node_update: false,
                service: None,
                checks: Vec::new(),
            }],
        );
        let moved = [member("c1", "127.0.0.7", MemberStatus::Alive)];
        let tables = apply(&meta_node, plan(&moved, &meta_node, "dc1"));
        let node = tables.node("c1").unwrap();
        assert_eq!(node.address, "127.0.0.7");
        assert_eq!(node.meta.get("rack").map(String::as_str), Some("r1"));
    }

    #[test]
    fn members_of_other_datacenters_are_left_alone() {
        let mut other = member("far", "127.0.0.5", MemberStatus::Alive);
        other.identity.tags.insert("dc".into(), "dc2".into());
        assert!(plan(&[other], &Tables::default(), "dc1").is_empty());
    }
}
