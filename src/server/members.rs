//! The leader keeps the catalog in step with the LAN pool, as Consul's `reconcileMember`: an
//! alive member's node is registered with a passing `serfHealth` check ("Serf Health Status"),
//! a failed member's `serfHealth` goes critical, which takes every service on it out of
//! passing health queries and DNS; a member that left, or was reaped or pruned, is
//! deregistered with everything on it.
//!
//! Consul also reaps every catalog node with a `serfHealth` check that its pool does not
//! know. Its pool remembers members across restarts (serf's snapshot); ours does not yet, so a
//! restarted leader would deregister every client before gossip reached them. Unknown nodes
//! are therefore reaped only once the pool has run longer than `reconnect_timeout`, by which
//! time any member it once knew and lost would have been reaped anyway.
//!
//! `plan` decides from the members and the catalog alone, so it is tested without a cluster;
//! it writes nothing that is already so, which keeps a full pass cheap.

use std::collections::{BTreeSet, HashSet};

use crate::gossip::{Member, MemberStatus};
use crate::state::Tables;
use crate::types::{
    Check, Command, DeregisterRequest, HealthStatus, Node, RaftIndexes, RegisterRequest,
};

pub const SERF_CHECK: &str = "serfHealth";
const SERF_CHECK_NAME: &str = "Serf Health Status";
const ALIVE_OUTPUT: &str = "Agent alive and reachable";
const FAILED_OUTPUT: &str = "Agent not live or unreachable";

/// The `serfHealth` check of `node` in `status`, as Consul's leader writes it.
pub fn serf_check(node: &str, status: HealthStatus) -> Check {
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

/// What the leader knows beside the member table.
pub struct Scope<'a> {
    pub datacenter: &'a str,
    /// The leader's own node, never deregistered by itself.
    pub leader_node: &'a str,
    /// Members the pool erased (reaper, prune) since the last complete pass.
    pub reaped: &'a BTreeSet<String>,
    /// Whether catalog nodes the pool does not know at all are reaped too.
    pub reap_unknown: bool,
}

fn deregister(node: &str) -> Command {
    Command::CatalogDeregister(DeregisterRequest {
        node: node.to_string(),
        service_id: None,
        check_id: None,
    })
}

/// The writes that bring the catalog in line with `members` of the scope's datacenter.
pub fn plan(members: &[Member], tables: &Tables, scope: &Scope) -> Vec<Command> {
    let datacenter = scope.datacenter;
    let mut writes = Vec::new();
    let listed: HashSet<&str> = members
        .iter()
        .map(|member| member.identity.name.as_str())
        .collect();
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
                        locality: None,
                    },
                };
                // A node the catalog does not have yet is created with skip_node_update: the
                // flag is decided when the write applies, so if the node's own agent registered
                // it meanwhile (with its tagged addresses and meta) that record stands.
                writes.push(register(RegisterRequest {
                    node,
                    skip_node_update: current || known.is_none(),
                    service: None,
                    checks: vec![serf_check(name, HealthStatus::Passing)],
                }));
            }
            MemberStatus::Failed => {
                // A failed member the catalog never had stays out of it (as Consul), and so
                // does one whose name a live node with another id holds.
                let Some(node) = known.filter(|node| same_node(node, &id)) else {
                    continue;
                };
                if serf == Some(HealthStatus::Critical) {
                    continue;
                }
                writes.push(register(RegisterRequest {
                    node: Node {
                        indexes: RaftIndexes::default(),
                        ..node.clone()
                    },
                    skip_node_update: true,
                    service: None,
                    checks: vec![serf_check(name, HealthStatus::Critical)],
                }));
            }
            MemberStatus::Left => {
                if known.is_some_and(|node| same_node(node, &id)) && name != scope.leader_node {
                    writes.push(deregister(name));
                }
            }
        }
    }
    // Reaped members, and (once the pool is old enough) nodes it never knew: only nodes the
    // pool maintains (with serfHealth) are touched, never ones registered through the catalog.
    for node in tables.nodes() {
        let name = node.name.as_str();
        if listed.contains(name) || name == scope.leader_node {
            continue;
        }
        let gossiped = tables
            .node_checks(name)
            .any(|check| check.check_id == SERF_CHECK);
        if gossiped && (scope.reap_unknown || scope.reaped.contains(name)) {
            writes.push(deregister(name));
        }
    }
    writes
}

/// Whether the catalog's `node` is the member with `id` (a node without an id could be).
fn same_node(node: &Node, id: &str) -> bool {
    node.id.is_empty() || id.is_empty() || node.id == id
}

fn register(request: RegisterRequest) -> Command {
    Command::CatalogRegister(Box::new(request))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;

    use super::*;
    use crate::gossip::NodeIdentity;

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

    static NONE_REAPED: BTreeSet<String> = BTreeSet::new();

    fn scope() -> Scope<'static> {
        Scope {
            datacenter: "dc1",
            leader_node: "s1",
            reaped: &NONE_REAPED,
            reap_unknown: false,
        }
    }

    fn apply(tables: &Tables, writes: Vec<Command>) -> Tables {
        let mut tables = tables.clone();
        for write in writes {
            let (next, result) = tables.proposed(&write);
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
        let writes = plan(&members, &tables, &scope());
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
            plan(&members, &tables, &scope()).is_empty(),
            "nothing left to do"
        );

        let members = vec![
            member("c1", "127.0.0.3", MemberStatus::Failed),
            member("c2", "127.0.0.4", MemberStatus::Alive),
        ];
        let writes = plan(&members, &tables, &scope());
        assert_eq!(writes.len(), 1);
        assert!(
            matches!(&writes[0], Command::CatalogRegister(request) if request.skip_node_update)
        );
        let tables = apply(&tables, writes);
        assert_eq!(serf_status(&tables, "c1"), Some(HealthStatus::Critical));
        let output = tables
            .node_checks("c1")
            .find(|check| check.check_id == SERF_CHECK)
            .map(|check| check.output.clone());
        assert_eq!(output.as_deref(), Some(FAILED_OUTPUT));
        assert!(plan(&members, &tables, &scope()).is_empty());

        // Back alive: passing again, node kept.
        let members = vec![member("c1", "127.0.0.3", MemberStatus::Alive)];
        let tables = apply(&tables, plan(&members, &tables, &scope()));
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
                &scope(),
            ),
        );
        // The node's agent adds its metadata.
        let mut node = meta_node.node("c1").cloned().unwrap();
        node.meta.insert("rack".into(), "r1".into());
        meta_node = apply(
            &meta_node,
            vec![register(RegisterRequest {
                node,
                skip_node_update: false,
                service: None,
                checks: Vec::new(),
            })],
        );
        let moved = [member("c1", "127.0.0.7", MemberStatus::Alive)];
        let tables = apply(&meta_node, plan(&moved, &meta_node, &scope()));
        let node = tables.node("c1").unwrap();
        assert_eq!(node.address, "127.0.0.7");
        assert_eq!(node.meta.get("rack").map(String::as_str), Some("r1"));
    }

    #[test]
    fn a_plan_made_before_the_agent_registered_does_not_clobber_its_record() {
        let empty = Tables::default();
        // The leader plans from a catalog that does not have c1 yet...
        let writes = plan(
            &[member("c1", "127.0.0.3", MemberStatus::Alive)],
            &empty,
            &scope(),
        );
        // ...c1's agent registers itself with its metadata before the plan applies.
        let mut node = Node {
            id: "id-c1".into(),
            name: "c1".into(),
            address: "127.0.0.3".into(),
            datacenter: "dc1".into(),
            tagged_addresses: Default::default(),
            meta: Default::default(),
            indexes: RaftIndexes::default(),
            locality: None,
        };
        node.meta.insert("rack".into(), "r1".into());
        node.tagged_addresses
            .insert("lan".into(), "127.0.0.3".into());
        let registered = apply(
            &empty,
            vec![register(RegisterRequest {
                node,
                skip_node_update: false,
                service: None,
                checks: Vec::new(),
            })],
        );
        let tables = apply(&registered, writes);
        let node = tables.node("c1").unwrap();
        assert_eq!(node.meta.get("rack").map(String::as_str), Some("r1"));
        assert_eq!(
            node.tagged_addresses.get("lan").map(String::as_str),
            Some("127.0.0.3")
        );
        assert_eq!(serf_status(&tables, "c1"), Some(HealthStatus::Passing));
    }

    #[test]
    fn left_reaped_and_long_unknown_members_are_deregistered_but_nothing_else() {
        let members = vec![
            member("s1", "127.0.0.2", MemberStatus::Alive),
            member("c1", "127.0.0.3", MemberStatus::Alive),
            member("c2", "127.0.0.4", MemberStatus::Alive),
            member("c3", "127.0.0.5", MemberStatus::Alive),
        ];
        let mut tables = apply(
            &Tables::default(),
            plan(&members, &Tables::default(), &scope()),
        );
        // A node registered through the catalog API, which gossip does not maintain.
        tables = apply(
            &tables,
            vec![register(RegisterRequest {
                node: Node {
                    id: String::new(),
                    name: "external".into(),
                    address: "10.0.0.1".into(),
                    datacenter: "dc1".into(),
                    tagged_addresses: Default::default(),
                    meta: Default::default(),
                    indexes: RaftIndexes::default(),
                    locality: None,
                },
                skip_node_update: false,
                service: None,
                checks: Vec::new(),
            })],
        );

        // c1 left; c2 was pruned (gone from the table); c3 is simply not listed.
        let now = vec![
            member("s1", "127.0.0.2", MemberStatus::Left),
            member("c1", "127.0.0.3", MemberStatus::Left),
        ];
        let reaped = BTreeSet::from(["c2".to_string()]);
        let narrow = Scope {
            reaped: &reaped,
            ..scope()
        };
        let after = apply(&tables, plan(&now, &tables, &narrow));
        assert!(after.node("c1").is_none(), "left is deregistered");
        assert!(after.node("c2").is_none(), "reaped is deregistered");
        assert!(
            after.node("c3").is_some(),
            "unknown is kept while the pool is young"
        );
        assert!(
            after.node("s1").is_some(),
            "the leader never deregisters itself"
        );
        assert!(after.node("external").is_some());

        let old_pool = Scope {
            reap_unknown: true,
            ..scope()
        };
        let after = apply(&after, plan(&now, &after, &old_pool));
        assert!(after.node("c3").is_none());
        assert!(after.node("s1").is_some());
        assert!(after.node("external").is_some());
    }

    #[test]
    fn an_impostor_with_a_live_nodes_name_changes_nothing() {
        let real = [member("c1", "127.0.0.3", MemberStatus::Alive)];
        let tables = apply(
            &Tables::default(),
            plan(&real, &Tables::default(), &scope()),
        );
        let mut impostor = member("c1", "127.0.0.9", MemberStatus::Alive);
        impostor
            .identity
            .tags
            .insert("id".into(), "id-other".into());
        // Its registration is refused by the catalog (the name is reserved)...
        let writes = plan(&[real[0].clone(), impostor.clone()], &tables, &scope());
        for write in writes {
            let (_, result) = tables.proposed(&write);
            assert!(
                matches!(result, crate::types::CommandResult::Catalog(Err(_))),
                "{result:?}"
            );
        }
        // ...and its failure or leave does not touch the real node.
        impostor.status = MemberStatus::Failed;
        assert!(plan(&[real[0].clone(), impostor.clone()], &tables, &scope()).is_empty());
        impostor.status = MemberStatus::Left;
        assert!(plan(&[real[0].clone(), impostor], &tables, &scope()).is_empty());
        assert_eq!(tables.node("c1").unwrap().address, "127.0.0.3");
    }

    #[test]
    fn members_of_other_datacenters_are_left_alone() {
        let mut other = member("far", "127.0.0.5", MemberStatus::Alive);
        other.identity.tags.insert("dc".into(), "dc2".into());
        assert!(plan(&[other], &Tables::default(), &scope()).is_empty());
    }
}
