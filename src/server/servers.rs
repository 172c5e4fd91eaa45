//! The leader keeps the Raft configuration in step with the servers of its datacenter in the
//! LAN pool, as Consul's leader and autopilot do:
//!
//! - an alive server that is not in the configuration is added as a non-voter (a learner);
//! - a learner that has caught up (within `MAX_TRAILING_LOGS` of the leader's log) and stayed
//!   so for `server_stabilization_time` is promoted to voter;
//! - a server that left the pool (or was reaped or pruned) is removed.
//!
//! A server that failed stays a voter: it may come back, and removing it is an operator's call
//! (`force-leave`, which makes it left). `plan` decides from the members, the configuration and
//! the leader's replication progress alone, so it is tested without a cluster.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use openraft::{BasicNode, ChangeMembers};

use crate::gossip::{Member, MemberStatus};
use crate::raft::{node_id_from_uuid, NodeId, Raft};
use crate::rpc::client::server_address;
use crate::rpc::ServerRpc;

/// How far behind the leader's log a learner may be and still count as caught up (autopilot's
/// `max_trailing_logs`).
const MAX_TRAILING_LOGS: u64 = 250;

/// One change to the Raft configuration.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    AddLearner(NodeId, BasicNode),
    Promote(NodeId),
    RemoveVoter(NodeId),
    RemoveLearner(NodeId),
}

/// What the leader sees of Raft when it plans.
pub struct RaftView<'a> {
    pub leader: NodeId,
    pub voters: &'a BTreeSet<NodeId>,
    pub learners: &'a BTreeSet<NodeId>,
    pub last_log_index: u64,
    /// How far each follower's log matches the leader's.
    pub matched: &'a BTreeMap<NodeId, u64>,
}

/// Tracks how long each learner has been caught up, across passes.
#[derive(Default)]
pub struct Promotions {
    healthy_since: HashMap<NodeId, Instant>,
    /// Whether the last plan saw learners, which the leader watches until they are promoted.
    learners: bool,
}

impl Promotions {
    /// The changes that bring Raft's configuration in line with `members` of `datacenter`.
    pub fn plan(
        &mut self,
        members: &[Member],
        datacenter: &str,
        raft: &RaftView,
        stabilization: Duration,
        now: Instant,
    ) -> Vec<Change> {
        let mut changes = Vec::new();
        let mut in_pool = BTreeSet::new();
        for member in members {
            let identity = &member.identity;
            if identity.tag("dc") != datacenter {
                continue;
            }
            let Some(address) = server_address(member) else {
                continue;
            };
            let id = node_id_from_uuid(identity.tag("id"));
            let known = raft.voters.contains(&id) || raft.learners.contains(&id);
            match member.status {
                MemberStatus::Left if raft.voters.contains(&id) && id != raft.leader => {
                    changes.push(Change::RemoveVoter(id))
                }
                MemberStatus::Left if raft.learners.contains(&id) => {
                    changes.push(Change::RemoveLearner(id))
                }
                MemberStatus::Left => {}
                MemberStatus::Alive if !known => {
                    changes.push(Change::AddLearner(id, BasicNode::new(address)));
                }
                MemberStatus::Alive | MemberStatus::Failed => {
                    in_pool.insert(id);
                }
            }
        }
        self.healthy_since
            .retain(|id, _| raft.learners.contains(id));
        self.learners = !raft.learners.is_empty();
        for learner in raft.learners {
            let caught_up = raft.matched.get(learner).is_some_and(|matched| {
                raft.last_log_index.saturating_sub(*matched) <= MAX_TRAILING_LOGS
            });
            if !caught_up || !in_pool.contains(learner) {
                self.healthy_since.remove(learner);
                continue;
            }
            let since = *self.healthy_since.entry(*learner).or_insert(now);
            if now.duration_since(since) >= stabilization {
                changes.push(Change::Promote(*learner));
            }
        }
        changes
    }

    /// Whether learners are catching up or waiting out their stabilization time, so the
    /// leader should look again soon.
    pub fn pending(&self) -> bool {
        self.learners
    }
}

/// What Raft's metrics say, for `plan`.
pub struct Snapshot {
    leader: NodeId,
    voters: BTreeSet<NodeId>,
    learners: BTreeSet<NodeId>,
    last_log_index: u64,
    matched: BTreeMap<NodeId, u64>,
}

impl Snapshot {
    pub fn of(raft: &Raft, leader: NodeId) -> Snapshot {
        let metrics = raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        Snapshot {
            leader,
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
            last_log_index: metrics.last_log_index.unwrap_or(0),
            matched: metrics
                .replication
                .map(|replication| {
                    replication
                        .into_iter()
                        .map(|(id, matched)| (id, matched.map_or(0, |log| log.index)))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    pub fn view(&self) -> RaftView<'_> {
        RaftView {
            leader: self.leader,
            voters: &self.voters,
            learners: &self.learners,
            last_log_index: self.last_log_index,
            matched: &self.matched,
        }
    }
}

/// Carries out one change; false when it failed (the next pass tries again).
pub async fn apply(rpc: &ServerRpc, change: Change) -> bool {
    let raft = rpc.raft();
    let outcome = match &change {
        Change::AddLearner(id, node) => {
            if let Some(peers) = other_cluster(rpc, node).await {
                tracing::warn!(
                    server = %node.addr,
                    ?peers,
                    "not adding a server that belongs to another Raft cluster"
                );
                return true;
            }
            raft.add_learner(*id, node.clone(), false).await
        }
        Change::Promote(id) => {
            raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([*id])), false)
                .await
        }
        Change::RemoveVoter(id) => {
            let ids = BTreeSet::from([*id]);
            raft.change_membership(ChangeMembers::RemoveVoters(ids), false)
                .await
        }
        Change::RemoveLearner(id) => {
            let ids = BTreeSet::from([*id]);
            raft.change_membership(ChangeMembers::RemoveNodes(ids), false)
                .await
        }
    };
    match outcome {
        Ok(_) => {
            tracing::info!(?change, "Raft configuration changed");
            true
        }
        Err(error) => {
            tracing::warn!(?change, %error, "cannot change the Raft configuration; will retry");
            false
        }
    }
}

/// The peers of the cluster `node` already belongs to, when that is not this one.
async fn other_cluster(rpc: &ServerRpc, node: &BasicNode) -> Option<Vec<String>> {
    let address = node.addr.parse().ok()?;
    let peers = rpc.peers_of(address).await.ok()?;
    let ours = rpc.peer_addresses();
    let foreign = !peers.is_empty() && !peers.iter().any(|peer| ours.contains(peer));
    foreign.then_some(peers)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    use super::{Change, Promotions, RaftView};
    use crate::gossip::{Member, MemberStatus, NodeIdentity};
    use crate::raft::node_id_from_uuid;

    fn id(index: usize) -> String {
        format!("{index:08}-0000-0000-0000-000000000000")
    }

    fn server(index: usize, status: MemberStatus) -> Member {
        Member {
            identity: NodeIdentity {
                name: format!("s{index}"),
                addr: SocketAddr::from(([127, 0, 0, index as u8], 8301)),
                started: 1,
                tags: BTreeMap::from([
                    ("role".to_string(), "consul".to_string()),
                    ("dc".to_string(), "dc1".to_string()),
                    ("id".to_string(), id(index)),
                    ("port".to_string(), "8300".to_string()),
                ]),
            },
            status,
        }
    }

    fn raft_id(index: usize) -> u64 {
        node_id_from_uuid(&id(index))
    }

    const STABLE: Duration = Duration::from_secs(10);

    #[test]
    fn a_new_server_is_added_as_a_learner_and_promoted_after_staying_caught_up() {
        let voters = BTreeSet::from([raft_id(1)]);
        let mut learners = BTreeSet::new();
        let mut matched = BTreeMap::new();
        let members = vec![
            server(1, MemberStatus::Alive),
            server(2, MemberStatus::Alive),
        ];
        let mut promotions = Promotions::default();
        let start = Instant::now();
        fn view<'a>(
            voters: &'a BTreeSet<u64>,
            learners: &'a BTreeSet<u64>,
            matched: &'a BTreeMap<u64, u64>,
        ) -> RaftView<'a> {
            RaftView {
                leader: raft_id(1),
                voters,
                learners,
                last_log_index: 1000,
                matched,
            }
        }
        let changes = promotions.plan(
            &members,
            "dc1",
            &view(&voters, &learners, &matched),
            STABLE,
            start,
        );
        let [Change::AddLearner(added, node)] = changes.as_slice() else {
            panic!("one learner added: {changes:?}");
        };
        assert_eq!((*added, node.addr.as_str()), (raft_id(2), "127.0.0.2:8300"));

        // Far behind: not promoted, however long it waits.
        learners.insert(raft_id(2));
        matched.insert(raft_id(2), 100);
        let later = start + 2 * STABLE;
        assert!(promotions
            .plan(
                &members,
                "dc1",
                &view(&voters, &learners, &matched),
                STABLE,
                later
            )
            .is_empty());
        assert!(promotions.pending(), "the leader keeps watching a learner");

        // Caught up: promoted only once it has stayed so for the stabilization time.
        matched.insert(raft_id(2), 990);
        assert!(promotions
            .plan(
                &members,
                "dc1",
                &view(&voters, &learners, &matched),
                STABLE,
                later
            )
            .is_empty());
        let stable = later + STABLE;
        assert_eq!(
            promotions.plan(
                &members,
                "dc1",
                &view(&voters, &learners, &matched),
                STABLE,
                stable
            ),
            vec![Change::Promote(raft_id(2))]
        );
    }

    #[test]
    fn a_server_that_left_is_removed_one_that_failed_is_kept_and_the_leader_never_removes_itself() {
        let voters = BTreeSet::from([raft_id(1), raft_id(2), raft_id(3)]);
        let learners = BTreeSet::from([raft_id(4)]);
        let matched = BTreeMap::new();
        let view = RaftView {
            leader: raft_id(1),
            voters: &voters,
            learners: &learners,
            last_log_index: 10,
            matched: &matched,
        };
        let members = vec![
            server(1, MemberStatus::Left),
            server(2, MemberStatus::Failed),
            server(3, MemberStatus::Left),
            server(4, MemberStatus::Left),
        ];
        let changes = Promotions::default().plan(&members, "dc1", &view, STABLE, Instant::now());
        assert_eq!(
            changes,
            vec![
                Change::RemoveVoter(raft_id(3)),
                Change::RemoveLearner(raft_id(4))
            ]
        );
    }
}
