//! The leader's autopilot, as Consul's: it keeps the Raft configuration in step with the
//! servers of its datacenter in the LAN pool and reports their health.
//!
//! Every pass (on member events, while learners wait, and every `HEALTH_INTERVAL`) it judges
//! each server of the configuration healthy or not: alive in the pool, heard from within
//! `last_contact_threshold`, at the leader's term, and within `max_trailing_logs` of the
//! leader's log. Then:
//!
//! - an alive server that is not in the configuration is added as a non-voter (a learner);
//! - a learner that has stayed healthy for `server_stabilization_time` is promoted to voter;
//! - a server that left the pool (or was forced out) is removed;
//! - with `cleanup_dead_servers`, a server the pool declared failed is removed, a minority of
//!   the voters at a time and never leaving fewer than `min_quorum` voters; a failed server
//!   that comes back is added again like a new one.
//!
//! `Autopilot::pass` decides from the members, the configuration, the leader's replication
//! progress and the time alone, so it is tested without a cluster.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant, SystemTime};

use openraft::{BasicNode, ChangeMembers};

use crate::gossip::{Member, MemberStatus};
use crate::raft::{node_id_from_uuid, NodeId, Raft};
use crate::rpc::client::server_address;
use crate::rpc::ServerRpc;
use crate::types::operator::{AutopilotConfig, AutopilotReport, ServerHealth};

/// How often the leader judges its servers' health (Consul's `ServerHealthInterval`).
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(2);

/// One change to the Raft configuration.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    AddLearner(NodeId, BasicNode),
    Promote(NodeId),
    RemoveVoter(NodeId),
    RemoveLearner(NodeId),
}

/// What one server of the configuration looks like from the leader's Raft.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    /// The last log entry known to match the leader's: (index, term).
    pub matched: Option<(u64, u64)>,
    /// Since the server last answered the leader's Raft traffic; `None` if it never did.
    pub last_contact: Option<Duration>,
}

/// What the leader sees of Raft when it plans.
pub struct RaftView {
    pub leader: NodeId,
    pub term: u64,
    pub last_log_index: u64,
    pub voters: BTreeSet<NodeId>,
    /// Every server of the configuration (voters and learners) and its address.
    pub nodes: BTreeMap<NodeId, String>,
    pub progress: BTreeMap<NodeId, Progress>,
    /// The leader's heartbeat interval: a follower's last contact normally stays below it,
    /// so the health threshold is never taken tighter than twice that.
    pub heartbeat: Duration,
}

impl RaftView {
    pub fn of(raft: &Raft, rpc: &ServerRpc, heartbeat: Duration) -> RaftView {
        let metrics = raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let contacts = rpc.peer_contacts();
        let progress = metrics
            .replication
            .iter()
            .flatten()
            .map(|(id, matched)| {
                let progress = Progress {
                    matched: matched.map(|log| (log.index, log.leader_id.term)),
                    last_contact: contacts.since(*id),
                };
                (*id, progress)
            })
            .collect();
        RaftView {
            leader: rpc.node_id(),
            term: metrics.current_term,
            last_log_index: metrics.last_log_index.unwrap_or(0),
            voters: membership.voter_ids().collect(),
            nodes: membership
                .nodes()
                .map(|(id, node)| (*id, node.addr.clone()))
                .collect(),
            progress,
            heartbeat,
        }
    }

    fn learners(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.nodes
            .keys()
            .copied()
            .filter(|id| !self.voters.contains(id))
    }
}

/// Autopilot's memory across passes: since when each server has been healthy or not.
#[derive(Default)]
pub struct Autopilot {
    stable: HashMap<NodeId, (bool, Instant)>,
    /// Whether the last pass saw learners, which the leader watches until they are promoted.
    learners: bool,
}

/// The servers of `datacenter` in the pool, by Raft id.
fn servers_in_pool<'a>(members: &'a [Member], datacenter: &str) -> BTreeMap<NodeId, &'a Member> {
    members
        .iter()
        .filter(|member| member.identity.tag("dc") == datacenter)
        .filter(|member| server_address(member).is_some())
        .map(|member| (node_id_from_uuid(member.identity.tag("id")), member))
        .collect()
}

impl Autopilot {
    /// Judges every server's health and decides the changes that bring the configuration in
    /// line with the pool and `config`.
    pub fn pass(
        &mut self,
        members: &[Member],
        datacenter: &str,
        raft: &RaftView,
        config: &AutopilotConfig,
        now: Instant,
        wall: SystemTime,
    ) -> (AutopilotReport, Vec<Change>) {
        let pool = servers_in_pool(members, datacenter);
        let report = self.health(&pool, raft, config, now, wall);
        let mut changes = Vec::new();
        for (id, member) in &pool {
            let known = raft.nodes.contains_key(id);
            match member.status {
                MemberStatus::Alive if !known => {
                    if let Some(address) = server_address(member) {
                        changes.push(Change::AddLearner(*id, BasicNode::new(address)));
                    }
                }
                MemberStatus::Left if known && !raft.voters.contains(id) => {
                    changes.push(Change::RemoveLearner(*id));
                }
                _ => {}
            }
        }
        let status = |id: &NodeId| pool.get(id).map(|member| member.status);
        let failed = |id: &NodeId| status(id) == Some(MemberStatus::Failed);
        self.learners = raft.learners().next().is_some();
        for learner in raft.learners() {
            if config.cleanup_dead_servers && failed(&learner) {
                changes.push(Change::RemoveLearner(learner));
                continue;
            }
            let stable = self.stable.get(&learner).is_some_and(|(healthy, since)| {
                *healthy && now.duration_since(*since) >= config.server_stabilization_time
            });
            if stable {
                changes.push(Change::Promote(learner));
            }
        }
        // Voters that left, then (with cleanup) failed ones: a minority of the voters in one
        // pass, since the rest must still form a majority of the configuration each removal
        // leaves; the next pass takes more. Dead-server cleanup also stops at `min_quorum`.
        let voters = raft.voters.len();
        let mut removable = voters.saturating_sub(1) / 2;
        let mut cleanable = voters.saturating_sub(config.min_quorum as usize);
        let others = || raft.voters.iter().filter(|id| **id != raft.leader);
        for voter in others().filter(|id| status(id) == Some(MemberStatus::Left)) {
            if removable > 0 {
                changes.push(Change::RemoveVoter(*voter));
                removable -= 1;
                cleanable = cleanable.saturating_sub(1);
            }
        }
        if config.cleanup_dead_servers {
            for voter in others().filter(|id| failed(id)) {
                if removable > 0 && cleanable > 0 {
                    changes.push(Change::RemoveVoter(*voter));
                    removable -= 1;
                    cleanable -= 1;
                }
            }
        }
        (report, changes)
    }

    fn health(
        &mut self,
        pool: &BTreeMap<NodeId, &Member>,
        raft: &RaftView,
        config: &AutopilotConfig,
        now: Instant,
        wall: SystemTime,
    ) -> AutopilotReport {
        let threshold = config.last_contact_threshold.max(2 * raft.heartbeat);
        self.stable.retain(|id, _| raft.nodes.contains_key(id));
        let mut servers = Vec::new();
        for (id, address) in &raft.nodes {
            let member = pool.get(id);
            let alive = member.is_some_and(|member| member.status == MemberStatus::Alive);
            let leader = *id == raft.leader;
            let progress = raft.progress.get(id).cloned().unwrap_or_default();
            let (last_index, last_term, last_contact) = match leader {
                true => (raft.last_log_index, raft.term, Some(Duration::ZERO)),
                false => {
                    let (index, term) = progress.matched.unwrap_or((0, 0));
                    (index, term, progress.last_contact)
                }
            };
            let healthy = alive
                && last_contact.is_some_and(|contact| contact <= threshold)
                && last_term == raft.term
                && last_index + config.max_trailing_logs >= raft.last_log_index;
            let entry = self.stable.entry(*id).or_insert((healthy, now));
            if entry.0 != healthy {
                *entry = (healthy, now);
            }
            let stable_for = now.duration_since(entry.1);
            servers.push(ServerHealth {
                raft_id: *id,
                id: member.map_or_else(
                    || format!("{id:016x}"),
                    |member| member.identity.tag("id").to_string(),
                ),
                name: member.map_or_else(String::new, |member| member.identity.name.clone()),
                address: address.clone(),
                serf_status: member
                    .map_or("none", |member| member.status.as_str())
                    .into(),
                version: member
                    .map(|member| member.identity.tag("build"))
                    .and_then(|build| build.split(':').next())
                    .unwrap_or_default()
                    .to_string(),
                leader,
                voter: raft.voters.contains(id),
                last_contact,
                last_term,
                last_index,
                healthy,
                stable_since: wall.checked_sub(stable_for).unwrap_or(wall),
            });
        }
        let quorum = raft.voters.len() / 2 + 1;
        let voters = || servers.iter().filter(|server| server.voter);
        let healthy_voters = voters().filter(|server| server.healthy).count();
        let alive_voters = voters()
            .filter(|server| server.serf_status == "alive")
            .count();
        AutopilotReport {
            healthy: servers.iter().all(|server| server.healthy),
            failure_tolerance: healthy_voters.saturating_sub(quorum) as u32,
            optimistic_failure_tolerance: alive_voters.saturating_sub(quorum) as u32,
            servers,
        }
    }

    /// Whether learners are catching up or waiting out their stabilization time, so the
    /// leader should look again soon.
    pub fn pending(&self) -> bool {
        self.learners
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
    use std::collections::BTreeMap;
    use std::net::SocketAddr;
    use std::time::{Duration, Instant, SystemTime};

    use super::{Autopilot, Change, Progress, RaftView};
    use crate::gossip::{Member, MemberStatus, NodeIdentity};
    use crate::raft::node_id_from_uuid;
    use crate::types::operator::AutopilotConfig;

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
                    ("build".to_string(), "0.1.0:abc".to_string()),
                ]),
            },
            status,
        }
    }

    fn raft_id(index: usize) -> u64 {
        node_id_from_uuid(&id(index))
    }

    /// Server 1 leads at term 2 with its log at 1000; `voters` and `learners` by index, each
    /// follower matched at `matched` and heard from 10 ms ago.
    fn view(voters: &[usize], learners: &[usize], matched: u64) -> RaftView {
        let all = voters.iter().chain(learners);
        RaftView {
            leader: raft_id(1),
            term: 2,
            last_log_index: 1000,
            voters: voters.iter().map(|index| raft_id(*index)).collect(),
            nodes: all
                .clone()
                .map(|index| (raft_id(*index), format!("127.0.0.{index}:8300")))
                .collect(),
            progress: all
                .filter(|index| **index != 1)
                .map(|index| {
                    let progress = Progress {
                        matched: Some((matched, 2)),
                        last_contact: Some(Duration::from_millis(10)),
                    };
                    (raft_id(*index), progress)
                })
                .collect(),
            heartbeat: Duration::from_millis(50),
        }
    }

    fn config() -> AutopilotConfig {
        AutopilotConfig::default()
    }

    const STABLE: Duration = Duration::from_secs(10);

    #[test]
    fn a_new_server_is_added_as_a_learner_and_promoted_after_staying_healthy() {
        let members = vec![
            server(1, MemberStatus::Alive),
            server(2, MemberStatus::Alive),
        ];
        let mut autopilot = Autopilot::default();
        let start = Instant::now();
        let wall = SystemTime::now();
        let (_, changes) =
            autopilot.pass(&members, "dc1", &view(&[1], &[], 0), &config(), start, wall);
        let [Change::AddLearner(added, node)] = changes.as_slice() else {
            panic!("one learner added: {changes:?}");
        };
        assert_eq!((*added, node.addr.as_str()), (raft_id(2), "127.0.0.2:8300"));

        // Far behind: unhealthy, not promoted however long it waits.
        let later = start + 2 * STABLE;
        let (report, changes) = autopilot.pass(
            &members,
            "dc1",
            &view(&[1], &[2], 100),
            &config(),
            later,
            wall,
        );
        assert!(changes.is_empty(), "{changes:?}");
        assert!(!report.healthy);
        assert!(autopilot.pending(), "the leader keeps watching a learner");

        // Caught up: promoted only once it has stayed healthy for the stabilization time.
        let caught_up = view(&[1], &[2], 990);
        let (report, changes) = autopilot.pass(&members, "dc1", &caught_up, &config(), later, wall);
        assert!(changes.is_empty(), "{changes:?}");
        assert!(report.healthy);
        let stable = later + STABLE;
        let (_, changes) = autopilot.pass(&members, "dc1", &caught_up, &config(), stable, wall);
        assert_eq!(changes, vec![Change::Promote(raft_id(2))]);
    }

    #[test]
    fn health_needs_the_pool_the_leaders_term_recent_contact_and_a_close_log() {
        let members = vec![
            server(1, MemberStatus::Alive),
            server(2, MemberStatus::Alive),
            server(3, MemberStatus::Alive),
        ];
        let now = Instant::now();
        let wall = SystemTime::now();
        let healthy = |raft: &RaftView, members: &[Member]| {
            let (report, _) = Autopilot::default().pass(members, "dc1", raft, &config(), now, wall);
            let server = |index| {
                report
                    .servers
                    .iter()
                    .find(|server| server.raft_id == raft_id(index))
                    .expect("listed")
                    .clone()
            };
            (report.clone(), server(3).healthy)
        };
        let (report, third) = healthy(&view(&[1, 2, 3], &[], 1000), &members);
        assert!(third && report.healthy);
        assert_eq!(report.failure_tolerance, 1);
        assert_eq!(report.servers.len(), 3);
        let leader = &report.servers[0];
        assert!(leader.leader && leader.voter);
        assert_eq!(leader.last_contact, Some(Duration::ZERO));
        assert_eq!(
            (leader.name.as_str(), leader.version.as_str()),
            ("s1", "0.1.0")
        );

        let mut raft = view(&[1, 2, 3], &[], 1000);
        // Silent for longer than the threshold (200 ms, above twice the heartbeat).
        raft.progress.get_mut(&raft_id(3)).expect("3").last_contact =
            Some(Duration::from_millis(150));
        assert!(healthy(&raft, &members).1, "within the threshold");
        raft.progress.get_mut(&raft_id(3)).expect("3").last_contact =
            Some(Duration::from_millis(250));
        let (report, third) = healthy(&raft, &members);
        assert!(!third && !report.healthy);
        assert_eq!(report.failure_tolerance, 0);
        assert_eq!(report.optimistic_failure_tolerance, 1);
        // A slow heartbeat (raft_multiplier 5) raises the threshold with it.
        raft.heartbeat = Duration::from_millis(250);
        assert!(healthy(&raft, &members).1);

        // At an older term, or never heard from, or failed in the pool: unhealthy.
        let mut raft = view(&[1, 2, 3], &[], 1000);
        raft.progress.get_mut(&raft_id(3)).expect("3").matched = Some((1000, 1));
        assert!(!healthy(&raft, &members).1);
        raft.progress.get_mut(&raft_id(3)).expect("3").last_contact = None;
        assert!(!healthy(&raft, &members).1);
        let mut failed = members.clone();
        failed[2].status = MemberStatus::Failed;
        let (report, third) = healthy(&view(&[1, 2, 3], &[], 1000), &failed);
        assert!(!third);
        assert_eq!(report.servers[2].serf_status, "failed");
    }

    #[test]
    fn stable_since_moves_only_when_health_changes() {
        let members = vec![
            server(1, MemberStatus::Alive),
            server(2, MemberStatus::Alive),
        ];
        let mut autopilot = Autopilot::default();
        let start = Instant::now();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let since = |autopilot: &mut Autopilot, matched, after: Duration| {
            let (report, _) = autopilot.pass(
                &members,
                "dc1",
                &view(&[1, 2], &[], matched),
                &config(),
                start + after,
                wall + after,
            );
            report.servers[1].stable_since
        };
        assert_eq!(since(&mut autopilot, 1000, Duration::ZERO), wall);
        assert_eq!(since(&mut autopilot, 1000, Duration::from_secs(5)), wall);
        let fell_behind = wall + Duration::from_secs(7);
        assert_eq!(
            since(&mut autopilot, 10, Duration::from_secs(7)),
            fell_behind
        );
        assert_eq!(
            since(&mut autopilot, 10, Duration::from_secs(9)),
            fell_behind
        );
    }

    #[test]
    fn left_servers_are_removed_and_failed_ones_a_minority_at_a_time_never_below_min_quorum() {
        let now = Instant::now();
        let wall = SystemTime::now();
        let members = vec![
            server(1, MemberStatus::Alive),
            server(2, MemberStatus::Left),
            server(3, MemberStatus::Failed),
            server(4, MemberStatus::Failed),
            server(5, MemberStatus::Alive),
            server(6, MemberStatus::Failed),
        ];
        let raft = view(&[1, 2, 3, 4, 5], &[6], 1000);
        let (_, changes) = Autopilot::default().pass(&members, "dc1", &raft, &config(), now, wall);
        // Five voters: at most two are removed in one pass, the one that left first.
        assert_eq!(
            changes,
            vec![
                Change::RemoveLearner(raft_id(6)),
                Change::RemoveVoter(raft_id(2)),
                Change::RemoveVoter(raft_id(3)),
            ]
        );

        let keep_dead = AutopilotConfig {
            cleanup_dead_servers: false,
            ..config()
        };
        let (_, changes) = Autopilot::default().pass(&members, "dc1", &raft, &keep_dead, now, wall);
        assert_eq!(changes, vec![Change::RemoveVoter(raft_id(2))]);

        let floor = AutopilotConfig {
            min_quorum: 5,
            ..config()
        };
        let (_, changes) = Autopilot::default().pass(&members, "dc1", &raft, &floor, now, wall);
        assert!(
            !changes.contains(&Change::RemoveVoter(raft_id(3))),
            "min_quorum 5 keeps every voter of five: {changes:?}"
        );

        // Three voters, one failed: removed (two remain, still a majority of three); the
        // leader is never removed, whatever the pool says of it.
        let members = vec![
            server(1, MemberStatus::Failed),
            server(2, MemberStatus::Alive),
            server(3, MemberStatus::Failed),
        ];
        let raft = view(&[1, 2, 3], &[], 1000);
        let (_, changes) = Autopilot::default().pass(&members, "dc1", &raft, &config(), now, wall);
        assert_eq!(changes, vec![Change::RemoveVoter(raft_id(3))]);
        // Two voters: none can go (the alive server outside the configuration is added).
        let raft = view(&[1, 3], &[], 1000);
        let (_, changes) = Autopilot::default().pass(&members, "dc1", &raft, &config(), now, wall);
        assert!(
            matches!(changes.as_slice(), [Change::AddLearner(..)]),
            "{changes:?}"
        );
    }
}
