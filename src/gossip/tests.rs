//! One suite, two transports: a pool converges after joins, declares a member that went
//! silent failed, sees one that leaves as left, and erases a failed one an operator prunes,
//! over the in-memory network (50 members in one process) and over real UDP sockets on
//! loopback.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use super::pool::{MemberStatus, Pool};
use super::transport::{MemoryNetwork, UdpTransport};
use super::NodeIdentity;
use crate::config::GossipTimings;
use crate::tasks::Tasks;

fn identity(index: usize, addr: SocketAddr) -> NodeIdentity {
    NodeIdentity {
        name: format!("node-{index:02}"),
        addr,
        started: 1,
        tags: BTreeMap::from([("role".to_string(), "node".to_string())]),
    }
}

/// Waits until `check` holds, or fails with what it last saw.
async fn until<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let last = match check().await {
            Ok(()) => return,
            Err(last) => last,
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} within {limit:?}: {last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every pool sees `expected` members alive (and, if given, `failed` as failed).
async fn all_see(pools: &[Pool], expected: usize, failed: Option<&str>) -> Result<(), String> {
    for pool in pools {
        let members = pool.members().await;
        let alive = members
            .iter()
            .filter(|m| m.status == MemberStatus::Alive)
            .count();
        if alive != expected {
            return Err(format!(
                "{} sees {alive} alive, not {expected}",
                pool.identity().name
            ));
        }
        if let Some(failed) = failed {
            let seen = members
                .iter()
                .any(|m| m.identity.name == failed && m.status == MemberStatus::Failed);
            if !seen {
                return Err(format!(
                    "{} does not see {failed} failed",
                    pool.identity().name
                ));
            }
        }
    }
    Ok(())
}

/// How every pool lists `name`: `Ok` when each shows `status` (`None`: not listed at all).
async fn all_list(pools: &[Pool], name: &str, status: Option<MemberStatus>) -> Result<(), String> {
    for pool in pools {
        let listed = pool
            .members()
            .await
            .into_iter()
            .find(|m| m.identity.name == name)
            .map(|m| m.status);
        if listed != status {
            return Err(format!(
                "{} lists {name} as {listed:?}",
                pool.identity().name
            ));
        }
    }
    Ok(())
}

/// The suite: `pools` join through the first, converge, then `silence(last)` makes the last
/// one go quiet and every other must declare it failed; the one before it leaves and every
/// other lists it left; the silent one, forced out with prune, is erased everywhere.
async fn converges_and_detects_a_silent_member(
    pools: Vec<Pool>,
    silence: impl FnOnce(&Pool),
    limit: Duration,
) {
    let seed = pools[0].identity().addr;
    for pool in &pools[1..] {
        let joined = pool.join(vec![seed]).await.expect("join");
        assert_eq!(joined, 1);
    }
    let size = pools.len();
    until("every member to see every other", limit, || {
        all_see(&pools, size, None)
    })
    .await;
    let (silent, others) = pools.split_last().expect("pools");
    let silent_name = silent.identity().name.clone();
    silence(silent);
    until("the silent member declared failed by all", limit, || {
        all_see(others, size - 1, Some(&silent_name))
    })
    .await;

    let (leaver, stayers) = others.split_last().expect("pools");
    let leaver_name = leaver.identity().name.clone();
    leaver.leave().await;
    until("the member that left listed as left by all", limit, || {
        all_list(stayers, &leaver_name, Some(MemberStatus::Left))
    })
    .await;

    let error = stayers[0]
        .force_leave("no-such-node", false)
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "agent: No node found with name 'no-such-node'"
    );
    stayers[0]
        .force_leave(&silent_name, true)
        .await
        .expect("force-leave a failed member");
    until("the pruned member erased by all", limit, || {
        all_list(stayers, &silent_name, None)
    })
    .await;
    until("the others still all alive", limit, || {
        all_see(stayers, size - 2, None)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_members_in_memory_converge_and_detect_a_silent_one() {
    let tasks = Tasks::new();
    let network = MemoryNetwork::new();
    let pools: Vec<Pool> = (0..50)
        .map(|index| {
            let addr: SocketAddr = format!("10.0.0.{}:8301", index + 1).parse().unwrap();
            let (transport, inbound) = network.attach(addr);
            Pool::start(
                identity(index, addr),
                GossipTimings::LOCAL,
                transport,
                inbound,
                &tasks,
            )
        })
        .collect();
    converges_and_detects_a_silent_member(
        pools,
        |silent| network.silence(silent.identity().addr, true),
        Duration::from_secs(30),
    )
    .await;
    tasks.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_over_udp_converge_and_detect_a_silent_one() {
    let tasks = Tasks::new();
    let mut pools = Vec::new();
    // The silent member runs under its own tasks, so stopping them silences it.
    let silent_tasks = Tasks::new();
    for index in 0..5 {
        let owner = if index == 4 { &silent_tasks } else { &tasks };
        let (transport, inbound) = UdpTransport::bind("127.0.0.1:0".parse().unwrap(), owner)
            .await
            .expect("bind");
        let addr = transport_addr(&transport);
        pools.push(Pool::start(
            identity(index, addr),
            GossipTimings::LOCAL,
            transport,
            inbound,
            owner,
        ));
    }
    converges_and_detects_a_silent_member(
        pools,
        |_| {
            silent_tasks.shutdown().cancel();
        },
        Duration::from_secs(30),
    )
    .await;
    tasks.stop(Duration::from_secs(5)).await;
}

fn transport_addr(transport: &UdpTransport) -> SocketAddr {
    use super::transport::Transport;
    transport.local_addr()
}

#[tokio::test]
async fn a_join_to_nothing_says_so() {
    let tasks = Tasks::new();
    let network = MemoryNetwork::new();
    let addr: SocketAddr = "10.0.1.1:8301".parse().unwrap();
    let (transport, inbound) = network.attach(addr);
    let pool = Pool::start(
        identity(0, addr),
        GossipTimings::LOCAL,
        transport,
        inbound,
        &tasks,
    );
    let error = pool
        .join(vec!["10.0.1.2:8301".parse().unwrap()])
        .await
        .unwrap_err();
    assert!(error.to_string().contains("10.0.1.2:8301"), "{error}");
    tasks.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_pools_refuse_strangers_and_rotate_keys_without_flapping() {
    use super::keyops::KeyOp;
    use super::keyring::{generate, Encryption, Keyring};
    let tasks = Tasks::new();
    let network = MemoryNetwork::new();
    let (first, second) = (generate(), generate());
    let encryption = |keys: &[&str]| Encryption {
        keyring: Keyring::of(keys).unwrap(),
        ..Encryption::off()
    };
    let start = |index: usize, encryption: Encryption| {
        let addr: SocketAddr = format!("10.0.2.{}:8301", index + 1).parse().unwrap();
        let (transport, inbound) = network.attach(addr);
        Pool::start_with(
            identity(index, addr),
            GossipTimings::LOCAL,
            encryption,
            transport,
            inbound,
            &tasks,
        )
    };
    let pools: Vec<Pool> = (0..3).map(|i| start(i, encryption(&[&first]))).collect();
    let seed = pools[0].identity().addr;
    for pool in &pools[1..] {
        pool.join(vec![seed]).await.expect("join with the key");
    }
    until("three encrypted members", Duration::from_secs(10), || {
        all_see(&pools, 3, None)
    })
    .await;

    // Without the key, or with another, a join is refused and says why.
    let plain = start(3, Encryption::off());
    let error = plain.join(vec![seed]).await.unwrap_err().to_string();
    assert!(error.contains("not encrypted"), "{error}");
    let stranger = start(4, encryption(&[&generate()]));
    let error = stranger.join(vec![seed]).await.unwrap_err().to_string();
    assert!(error.contains("no installed gossip key"), "{error}");
    assert!(pools[0].dropped_messages() > 0);

    // Rotation: install, use, remove, each answered by all three, nobody flapping.
    let summary = pools[1]
        .keyring(KeyOp::Install(second.clone()))
        .await
        .unwrap();
    assert_eq!((summary.num_resp, summary.num_err), (3, 0), "{summary:?}");
    assert_eq!(summary.keys.get(&second), Some(&3));
    assert_eq!(summary.keys.get(&first), Some(&3));
    let summary = pools[0].keyring(KeyOp::Use(second.clone())).await.unwrap();
    assert_eq!(summary.primary_keys.get(&second), Some(&3), "{summary:?}");
    let summary = pools[2]
        .keyring(KeyOp::Remove(second.clone()))
        .await
        .unwrap();
    assert_eq!(
        summary.num_err, 3,
        "the primary cannot be removed: {summary:?}"
    );
    let summary = pools[2]
        .keyring(KeyOp::Remove(first.clone()))
        .await
        .unwrap();
    assert_eq!((summary.num_resp, summary.num_err), (3, 0), "{summary:?}");
    let listed = pools[1].keyring(KeyOp::List).await.unwrap();
    assert_eq!(listed.keys.len(), 1);
    assert_eq!(listed.keys.get(&second), Some(&3));
    all_see(&pools, 3, None).await.expect("nobody flapped");
    for pool in &pools {
        let failed = pool
            .members()
            .await
            .into_iter()
            .filter(|m| m.status != MemberStatus::Alive && m.identity.name.as_str() < "node-03")
            .count();
        assert_eq!(failed, 0);
    }
    // An old-key member is a stranger now.
    let late = start(5, encryption(&[&first]));
    assert!(late.join(vec![seed]).await.is_err());
    tasks.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_that_heals_rejoins_both_sides() {
    let tasks = Tasks::new();
    let network = MemoryNetwork::new();
    let timings = GossipTimings {
        reconnect_interval: Duration::from_millis(500),
        ..GossipTimings::LOCAL
    };
    let pools: Vec<Pool> = (0..4)
        .map(|index| {
            let addr: SocketAddr = format!("10.0.3.{}:8301", index + 1).parse().unwrap();
            let (transport, inbound) = network.attach(addr);
            Pool::start(identity(index, addr), timings, transport, inbound, &tasks)
        })
        .collect();
    let seed = pools[0].identity().addr;
    for pool in &pools[1..] {
        pool.join(vec![seed]).await.expect("join");
    }
    until("all four alive", Duration::from_secs(10), || {
        all_see(&pools, 4, None)
    })
    .await;
    let (cut, rest) = pools.split_last().expect("pools");
    let cut_name = cut.identity().name.clone();
    network.silence(cut.identity().addr, true);
    until(
        "the cut member failed on the rest",
        Duration::from_secs(20),
        || all_see(rest, 3, Some(&cut_name)),
    )
    .await;
    until(
        "the cut member sees the rest failed",
        Duration::from_secs(20),
        || all_see(std::slice::from_ref(cut), 1, None),
    )
    .await;
    network.silence(cut.identity().addr, false);
    until("both sides rejoined", Duration::from_secs(20), || {
        all_see(&pools, 4, None)
    })
    .await;
    tasks.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_gossip_port_is_counted_and_changes_no_membership() {
    let tasks = Tasks::new();
    let mut pools = Vec::new();
    for index in 0..2 {
        let (transport, inbound) = UdpTransport::bind("127.0.0.1:0".parse().unwrap(), &tasks)
            .await
            .expect("bind");
        let addr = transport_addr(&transport);
        pools.push(Pool::start(
            identity(index, addr),
            GossipTimings::LOCAL,
            transport,
            inbound,
            &tasks,
        ));
    }
    pools[1]
        .join(vec![pools[0].identity().addr])
        .await
        .expect("join");
    until("two alive", Duration::from_secs(10), || {
        all_see(&pools, 2, None)
    })
    .await;

    let target = pools[0].identity().addr;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("socket");
    let garbage: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff; 3],
        // A plain frame with a gossip kind and nothing a codec can read.
        vec![0, 0, 1, 2, 3],
        // Claims to be sealed where encryption is off.
        vec![1; 64],
        // Larger than any gossip packet.
        vec![0; 60_000],
    ];
    for packet in &garbage {
        let _ = socket.send_to(packet, target);
    }
    until("the garbage counted", Duration::from_secs(5), || async {
        match pools[0].dropped_messages() >= 4 {
            true => Ok(()),
            false => Err(format!("{} dropped", pools[0].dropped_messages())),
        }
    })
    .await;
    all_see(&pools, 2, None)
        .await
        .expect("membership unchanged");
    tasks.stop(Duration::from_secs(5)).await;
}

/// Lifeguard's probe stretching: a member whose timers ran late waits `awareness + 1` times as
/// long for direct answers and between probe rounds, and nothing else it schedules changes.
#[test]
fn a_late_member_stretches_its_probes_not_its_other_timers() {
    use foca::{Timer, TimerToken};

    use super::pool::scaled_by_awareness;

    let member = identity(1, "127.0.0.1:1".parse().unwrap());
    let token: TimerToken = 7;
    let second = Duration::from_secs(1);
    let probe = Timer::ProbeRandomMember(token);
    let indirect = Timer::SendIndirectProbe {
        probed_id: member.clone(),
        token,
    };
    let gossip = Timer::PeriodicGossip(token);
    assert_eq!(scaled_by_awareness(second, &probe, 0), second);
    assert_eq!(scaled_by_awareness(second, &probe, 3), 4 * second);
    assert_eq!(
        scaled_by_awareness(second / 2, &indirect, 8),
        second * 9 / 2
    );
    assert_eq!(scaled_by_awareness(second, &gossip, 8), second);
}
