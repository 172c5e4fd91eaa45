//! Forming a new cluster with `-bootstrap-expect N` (Consul's `maybeBootstrap`): a server
//! waits until N servers of its datacenter are alive in the LAN pool, all expecting N, asks
//! each whether it already belongs to a cluster, and if none does, initializes Raft with all of
//! them. Every one of them does the same with the same configuration, which openraft allows;
//! whichever wins the first election leads. A server that finds an existing cluster does not
//! bootstrap: the leader adds it (`servers`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::BasicNode;
use tokio_util::sync::CancellationToken;

use crate::gossip::{Member, MemberStatus, Pool};
use crate::raft::{node_id_from_uuid, NodeId};
use crate::rpc::client::server_address;
use crate::rpc::ServerRpc;

/// How often the pool is looked at again without a member event.
const RECHECK: Duration = Duration::from_secs(1);

/// What the pool says about forming the cluster.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Fewer than `expect` servers so far.
    Wait(usize),
    /// A server disagrees about how to form: waiting will not help until an operator acts.
    Conflict(String),
    /// These servers, by Raft id, with their server RPC addresses.
    Bootstrap(BTreeMap<NodeId, BasicNode>),
}

/// Decides from the members alone, so the rules are tested without a cluster.
pub fn decide(members: &[Member], datacenter: &str, expect: u32) -> Decision {
    let servers: Vec<&Member> = members
        .iter()
        .filter(|member| member.status == MemberStatus::Alive)
        .filter(|member| member.identity.tag("role") == "consul")
        .filter(|member| member.identity.tag("dc") == datacenter)
        .collect();
    let mut nodes = BTreeMap::new();
    for member in &servers {
        let identity = &member.identity;
        // Consul's messages, word for word, so operators find them in its documentation.
        if identity.tag("bootstrap") == "1" {
            return Decision::Conflict(format!(
                "Member {} has bootstrap mode. Expect disabled.",
                identity.name
            ));
        }
        // A server started without bootstrap_expect carries no `expect` and does not stop
        // the others (Consul counts it among the servers, as here).
        let theirs = identity.tag("expect");
        if !theirs.is_empty() && theirs != expect.to_string() {
            return Decision::Conflict(format!(
                "Member {} has a conflicting expect value. All nodes should expect the same \
                 number.",
                identity.name
            ));
        }
        let Some(address) = server_address(member) else {
            continue;
        };
        nodes.insert(
            node_id_from_uuid(identity.tag("id")),
            BasicNode::new(address),
        );
    }
    if nodes.len() < expect as usize {
        return Decision::Wait(nodes.len());
    }
    Decision::Bootstrap(nodes)
}

/// Runs until this server's Raft is initialized (by itself or by a leader that added it).
pub async fn bootstrap_when_expected(
    rpc: Arc<ServerRpc>,
    lan: Pool,
    datacenter: String,
    expect: u32,
    stop: CancellationToken,
) {
    let mut events = lan.events();
    let mut last_conflict = String::new();
    loop {
        match rpc.raft().is_initialized().await {
            Ok(false) => {}
            Ok(true) => return,
            Err(error) => {
                tracing::error!(%error, "cannot read Raft state; not bootstrapping");
                return;
            }
        }
        match decide(&lan.members().await, &datacenter, expect) {
            Decision::Wait(found) => {
                tracing::debug!(found, expect, "waiting for servers to bootstrap")
            }
            Decision::Conflict(reason) => {
                if reason != last_conflict {
                    tracing::error!("{reason}");
                    last_conflict = reason;
                }
            }
            Decision::Bootstrap(nodes) => {
                if try_bootstrap(&rpc, nodes).await {
                    return;
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = events.recv() => {}
            _ = tokio::time::sleep(RECHECK) => {}
        }
    }
}

/// Bootstraps with `nodes` unless one of them already belongs to a cluster; true when done
/// (bootstrapped, or a cluster exists that will add this server).
async fn try_bootstrap(rpc: &ServerRpc, nodes: BTreeMap<NodeId, BasicNode>) -> bool {
    for (id, node) in &nodes {
        if *id == rpc.node_id() {
            continue;
        }
        let Ok(address) = node.addr.parse() else {
            continue;
        };
        match rpc.peers_of(address).await {
            Ok(peers) if peers.is_empty() => {}
            Ok(peers) => {
                tracing::info!(
                    server = %node.addr,
                    ?peers,
                    "an existing Raft cluster was found; not bootstrapping"
                );
                return true;
            }
            Err(error) => {
                tracing::warn!(server = %node.addr, %error, "cannot ask a server for its Raft peers; will retry");
                return false;
            }
        }
    }
    let addresses: Vec<&str> = nodes.values().map(|node| node.addr.as_str()).collect();
    match rpc.raft().initialize(nodes.clone()).await {
        Ok(()) => {
            tracing::info!(servers = ?addresses, "bootstrapped the Raft cluster");
            true
        }
        Err(openraft::error::RaftError::APIError(
            openraft::error::InitializeError::NotAllowed(_),
        )) => true,
        Err(error) => {
            tracing::error!(%error, "cannot bootstrap the Raft cluster; will retry");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;

    use super::{decide, Decision};
    use crate::gossip::{Member, MemberStatus, NodeIdentity};
    use crate::raft::node_id_from_uuid;

    const IDS: [&str; 4] = [
        "11111111-0000-0000-0000-000000000000",
        "22222222-0000-0000-0000-000000000000",
        "33333333-0000-0000-0000-000000000000",
        "44444444-0000-0000-0000-000000000000",
    ];

    fn server(index: usize, tags: &[(&str, &str)], status: MemberStatus) -> Member {
        let mut all = BTreeMap::from([
            ("role".to_string(), "consul".to_string()),
            ("dc".to_string(), "dc1".to_string()),
            ("id".to_string(), IDS[index].to_string()),
            ("port".to_string(), "8300".to_string()),
        ]);
        for (key, value) in tags {
            all.insert(key.to_string(), value.to_string());
        }
        Member {
            identity: NodeIdentity {
                name: format!("s{index}"),
                addr: SocketAddr::from(([127, 0, 0, index as u8 + 1], 8301)),
                started: 1,
                tags: all,
            },
            status,
        }
    }

    #[test]
    fn waits_for_the_expected_number_of_alive_servers_of_its_datacenter() {
        let members = vec![
            server(0, &[("expect", "3")], MemberStatus::Alive),
            server(1, &[("expect", "3")], MemberStatus::Alive),
            server(2, &[("expect", "3")], MemberStatus::Failed),
            server(3, &[("expect", "3"), ("dc", "dc2")], MemberStatus::Alive),
        ];
        assert_eq!(decide(&members, "dc1", 3), Decision::Wait(2));
    }

    #[test]
    fn bootstraps_with_every_server_by_raft_id_and_rpc_address() {
        let members: Vec<Member> = (0..3)
            .map(|index| server(index, &[("expect", "3")], MemberStatus::Alive))
            .collect();
        let Decision::Bootstrap(nodes) = decide(&members, "dc1", 3) else {
            panic!("three servers expecting three bootstrap");
        };
        let addresses: Vec<(u64, String)> = nodes
            .into_iter()
            .map(|(id, node)| (id, node.addr))
            .collect();
        let mut expected: Vec<(u64, String)> = (0..3)
            .map(|index| {
                (
                    node_id_from_uuid(IDS[index]),
                    format!("127.0.0.{}:8300", index + 1),
                )
            })
            .collect();
        expected.sort();
        assert_eq!(addresses, expected);
    }

    #[test]
    fn a_server_without_expect_is_no_conflict() {
        let mut members: Vec<Member> = (0..2)
            .map(|index| server(index, &[("expect", "3")], MemberStatus::Alive))
            .collect();
        members.push(server(2, &[], MemberStatus::Alive));
        assert!(
            matches!(decide(&members, "dc1", 3), Decision::Bootstrap(nodes) if nodes.len() == 3)
        );
    }

    #[test]
    fn a_conflicting_expect_or_a_bootstrap_server_stops_formation_with_consuls_message() {
        let mut members: Vec<Member> = (0..2)
            .map(|index| server(index, &[("expect", "3")], MemberStatus::Alive))
            .collect();
        members.push(server(2, &[("expect", "2")], MemberStatus::Alive));
        assert_eq!(
            decide(&members, "dc1", 3),
            Decision::Conflict(
                "Member s2 has a conflicting expect value. All nodes should expect the same \
                 number."
                    .into()
            )
        );
        members[2] = server(2, &[("bootstrap", "1")], MemberStatus::Alive);
        assert_eq!(
            decide(&members, "dc1", 3),
            Decision::Conflict("Member s2 has bootstrap mode. Expect disabled.".into())
        );
    }
}
