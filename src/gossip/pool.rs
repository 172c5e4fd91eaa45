//! One gossip pool (the LAN pool of a datacenter, later the WAN pool of servers): a task that
//! owns the foca instance and takes every input through one channel (received packets,
//! timers, joins, leave, member queries), so the protocol state is never shared or locked.
//!
//! Timings are memberlist's (`config::GossipTimings`: Consul's LAN, WAN and local profiles,
//! or an operator's `gossip_lan`).
//!
//! foca is sans-IO: after every call the task drains its runtime, sending packets through the
//! transport, scheduling timers, and turning membership notifications into `MemberEvent`s.
//! Timers are kept in one ordered queue and fed back in order (foca relies on it).
//!
//! foca has no full-state sync, so the pool adds memberlist's push-pull: on every join, and
//! every push-pull interval with a random member, the two exchange their whole membership
//! tables over a stream and apply each other's (`apply_many`). Gossip spreads changes fast;
//! push-pull guarantees that whatever gossip lost converges anyway.
//!
//! foca only knows alive, suspect and down, and forgets down members. The pool adds Serf's
//! member table on top: a member that broadcast a leave intent (`intent`) before going down is
//! `left`, any other that went down is `failed`; both stay listed (`departed`) until the
//! reaper erases them (failed after `reconnect_timeout`, left after `tombstone_timeout`), or
//! an operator prunes them (`force_leave`).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroU8, NonZeroUsize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use foca::{AccumulatingRuntime, Foca, OwnedNotification, PeriodicParams, State, Timer};
use rand_010::SeedableRng;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;

use super::codec::Codec;
use super::coordinate::Vivaldi;
use super::identity::NodeIdentity;
use super::keyops::{self, KeyAnswer, KeyOp, KeyQuery, KeySummary};
use super::keyring::{Encryption, Kind, Refusal};
use super::messages::{self, Broadcast, Heard, LeaveIntent, UserEvent};
use super::transport::{Inbound, Received, Transport};
use crate::config::GossipTimings;
use crate::tasks::Tasks;
use crate::types::coordinate::Coordinate;

/// foca's configuration for a pool of `size` members with `timings`.
pub fn foca_config(timings: &GossipTimings, size: usize) -> foca::Config {
    let size =
        NonZeroU32::new(u32::try_from(size.max(1)).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN);
    let mut config = foca::Config::new_lan(size);
    let period = timings.probe_interval;
    config.probe_period = period;
    config.probe_rtt = timings.probe_timeout;
    // memberlist's suspicion timeout: multiplier × max(1, log10(n)) × probe interval.
    let scale = f64::from(size.get()).log10().max(1.0);
    config.suspect_to_down_after = period.mul_f64(f64::from(timings.suspicion_mult) * scale);
    config.periodic_gossip = Some(PeriodicParams {
        frequency: timings.gossip_interval,
        num_members: NonZeroUsize::new(timings.gossip_nodes as usize).unwrap_or(NonZeroUsize::MIN),
    });
    // memberlist's retransmissions: mult × ceil(log10(n + 1)), at least 4 even in a pool of
    // one (foca's floor(4 × log10(n + 1)) is 1 there, and a pool that grows from one by quick
    // joins then spreads its first updates once each).
    let retransmit =
        f64::from(timings.retransmit_mult) * (f64::from(size.get()) + 1.0).log10().ceil();
    config.max_transmissions =
        NonZeroU8::new(retransmit.clamp(4.0, 255.0) as u8).unwrap_or(NonZeroU8::MIN);
    config.periodic_announce = Some(PeriodicParams {
        frequency: timings.push_pull_interval,
        num_members: NonZeroUsize::MIN,
    });
    config
}

/// A member's status as Consul names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberStatus {
    Alive,
    /// Declared down by the pool (probes and indirect probes failed, suspicion expired).
    Failed,
    /// Went down after saying it was leaving (or an operator forced it out).
    Left,
}

impl MemberStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberStatus::Alive => "alive",
            MemberStatus::Failed => "failed",
            MemberStatus::Left => "left",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub identity: NodeIdentity,
    pub status: MemberStatus,
}

/// A change in membership, as the rest of the agent sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberEvent {
    Joined(NodeIdentity),
    Failed(NodeIdentity),
    Left(NodeIdentity),
    /// Erased from the table (reaped, or pruned by an operator).
    Reaped(NodeIdentity),
    /// The member at this address restarted or renewed itself.
    Replaced {
        old: NodeIdentity,
        new: NodeIdentity,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("no member answered at {0:?}")]
    Unreachable(Vec<SocketAddr>),
    /// The member at the address answered but would not take us, or we could not read it
    /// (gossip encryption that differs).
    #[error("{0}: {1}")]
    Refused(SocketAddr, String),
    #[error("the gossip pool has stopped")]
    Stopped,
}

#[derive(Debug, thiserror::Error)]
#[error("the gossip pool has stopped")]
pub struct PoolStopped;

#[derive(Debug, thiserror::Error)]
pub enum FireError {
    #[error("user event is {0} bytes encoded; the gossip limit is {1}")]
    TooLarge(usize, usize),
    #[error("the gossip pool has stopped")]
    Stopped,
}

#[derive(Debug, thiserror::Error)]
pub enum ForceLeaveError {
    /// Consul's words, which its CLI and API users see.
    #[error("agent: No node found with name '{0}'")]
    NoSuchMember(String),
    #[error("the gossip pool has stopped")]
    Stopped,
}

/// Everything that drives the pool's task.
enum Input {
    Received(Received),
    /// Another member's state, from a push-pull this member started.
    Pulled(SocketAddr, Result<Vec<u8>, super::transport::ExchangeError>),
    Join(Vec<SocketAddr>, oneshot::Sender<Result<usize, JoinError>>),
    Members(oneshot::Sender<Vec<Member>>),
    Leave(oneshot::Sender<()>),
    ForceLeave {
        name: String,
        prune: bool,
        reply: oneshot::Sender<Result<(), ForceLeaveError>>,
    },
    /// Fires a user event (its ltime is given here); answers with the event as sent.
    Fire(UserEvent, oneshot::Sender<Result<UserEvent, FireError>>),
    /// A keyring operation on every member; answers with their answers summed.
    Keyring(KeyOp, oneshot::Sender<KeySummary>),
    /// This member's network coordinate.
    Coordinate(oneshot::Sender<Coordinate>),
    /// Every active member's last known coordinate, this one's included.
    Coordinates(oneshot::Sender<Vec<(String, Coordinate)>>),
}

/// A coordinate probe and its answer: who sends it and where it stands.
#[derive(serde::Serialize, serde::Deserialize)]
struct Probe {
    sequence: u64,
    name: String,
    coordinate: Coordinate,
}

/// How many queued inputs are read before due timers fire (bounded, so a flood of packets
/// cannot hold timers back forever).
const INPUTS_BEFORE_TIMERS: usize = 1024;
/// Probe intervals a member that ran late holds off declaring others down (memberlist's
/// awareness ceiling).
const MAX_AWARENESS: u32 = 8;

/// How long a coordinate probe may go unanswered before it is forgotten.
const PROBE_FORGET: Duration = Duration::from_secs(10);

/// How often at most a member's dropped messages are logged (each is counted).
const DROP_LOG_EVERY: Duration = Duration::from_secs(60);

/// The largest message spread through the pool, well inside foca's packet.
const MAX_BROADCAST: usize = 1024;

/// How often departed members are checked against their timeouts (Serf's reap interval).
const REAP_EVERY: Duration = Duration::from_secs(15);

/// A member that went down, kept listed until it is reaped.
struct Departed {
    identity: NodeIdentity,
    status: MemberStatus,
    since: Instant,
}

/// How long a leave may take before whoever asked goes on without it.
const LEAVE_LIMIT: Duration = Duration::from_secs(5);

/// How long a join waits for the first answer from the addresses it was given.
const JOIN_WAIT: Duration = Duration::from_secs(5);

/// A handle to a running pool.
#[derive(Clone)]
pub struct Pool {
    inputs: mpsc::Sender<Input>,
    events: broadcast::Sender<MemberEvent>,
    user_events: broadcast::Sender<UserEvent>,
    identity: Arc<NodeIdentity>,
    /// Messages refused (undecryptable, unencrypted where encryption is on, garbled).
    dropped: Arc<AtomicU64>,
    encrypted: bool,
}

impl Pool {
    /// Starts the pool's task for `identity` over `transport`, without encryption.
    pub fn start(
        identity: NodeIdentity,
        timings: GossipTimings,
        transport: impl Transport,
        inbound: Inbound,
        tasks: &Tasks,
    ) -> Pool {
        Pool::start_with(
            identity,
            timings,
            Encryption::off(),
            transport,
            inbound,
            tasks,
        )
    }

    /// Starts the pool's task, sealing every message with `encryption`'s keyring.
    pub fn start_with(
        identity: NodeIdentity,
        timings: GossipTimings,
        encryption: Encryption,
        transport: impl Transport,
        mut inbound: Inbound,
        tasks: &Tasks,
    ) -> Pool {
        let (inputs, queue) = mpsc::channel(64);
        let (events, _) = broadcast::channel(512);
        // Serf's event buffer.
        let (user_events, _) = broadcast::channel(512);
        let forward = inputs.clone();
        tasks.spawn("gossip.inbound", async move {
            while let Some(received) = inbound.recv().await {
                if forward.send(Input::Received(received)).await.is_err() {
                    return;
                }
            }
        });
        let seed = rand::random::<u64>();
        let heard = Heard::default();
        let foca = Foca::with_custom_broadcast(
            identity.clone(),
            foca_config(&timings, 1),
            rand_010::rngs::StdRng::seed_from_u64(seed),
            Codec,
            messages::Handler::new(heard.clone()),
        );
        let run = Run {
            foca,
            runtime: AccumulatingRuntime::new(),
            timers: BinaryHeap::new(),
            sequence: 0,
            transport: Arc::new(transport),
            events: events.clone(),
            timings,
            joining: Vec::new(),
            size: 1,
            tasks: tasks.clone(),
            inputs: inputs.clone(),
            heard,
            departed: BTreeMap::new(),
            leaving: HashSet::new(),
            prunes: Vec::new(),
            user_events: user_events.clone(),
            event_clock: 0,
            encrypted: encryption.keyring.enabled(),
            encryption,
            queries: HashMap::new(),
            refusals: HashMap::new(),
            dropped: Arc::new(AtomicU64::new(0)),
            drop_logged: HashMap::new(),
            vivaldi: Vivaldi::default(),
            awareness: 0,
            probes: HashMap::new(),
            probe_sequence: 0,
            coordinates: HashMap::new(),
        };
        let dropped = run.dropped.clone();
        let encrypted = run.encrypted;
        tasks.spawn("gossip.pool", run.run(queue));
        Pool {
            inputs,
            events,
            user_events,
            identity: Arc::new(identity),
            dropped,
            encrypted,
        }
    }

    /// Messages this member refused so far.
    pub fn dropped_messages(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Whether this member started with gossip encryption.
    pub fn encrypted(&self) -> bool {
        self.encrypted
    }

    /// This member's coordinate and every active member's last known one, by member name.
    pub async fn coordinates(&self) -> Vec<(String, Coordinate)> {
        let (reply, answer) = oneshot::channel();
        if self.inputs.send(Input::Coordinates(reply)).await.is_err() {
            return Vec::new();
        }
        answer.await.unwrap_or_default()
    }

    /// This member's network coordinate (the origin until it has measured anything).
    pub async fn coordinate(&self) -> Coordinate {
        let (reply, answer) = oneshot::channel();
        if self.inputs.send(Input::Coordinate(reply)).await.is_err() {
            return Coordinate::default();
        }
        answer.await.unwrap_or_default()
    }

    /// Runs a keyring operation on every member and sums their answers.
    pub async fn keyring(&self, op: KeyOp) -> Result<KeySummary, PoolStopped> {
        let (reply, answer) = oneshot::channel();
        self.inputs
            .send(Input::Keyring(op, reply))
            .await
            .map_err(|_| PoolStopped)?;
        answer.await.map_err(|_| PoolStopped)
    }

    pub fn identity(&self) -> &NodeIdentity {
        &self.identity
    }

    /// Announces this member to each of `addresses`; the number that answered.
    pub async fn join(&self, addresses: Vec<SocketAddr>) -> Result<usize, JoinError> {
        let (reply, answer) = oneshot::channel();
        self.inputs
            .send(Input::Join(addresses, reply))
            .await
            .map_err(|_| JoinError::Stopped)?;
        answer.await.map_err(|_| JoinError::Stopped)?
    }

    /// Every member this one knows of, itself included.
    pub async fn members(&self) -> Vec<Member> {
        let (reply, answer) = oneshot::channel();
        if self.inputs.send(Input::Members(reply)).await.is_err() {
            return Vec::new();
        }
        answer.await.unwrap_or_default()
    }

    /// Leaves the pool: the others learn this member left. Gives up after `LEAVE_LIMIT`
    /// (with a warning), so shutting down never hangs on it.
    pub async fn leave(&self) {
        let (reply, answer) = oneshot::channel();
        let leaving = async {
            if self.inputs.send(Input::Leave(reply)).await.is_ok() {
                let _ = answer.await;
            }
        };
        if tokio::time::timeout(LEAVE_LIMIT, leaving).await.is_err() {
            tracing::warn!("leaving the gossip pool took longer than {LEAVE_LIMIT:?}; going on");
        }
    }

    /// Marks a failed member `left` on every member (`prune`: erases it at once).
    pub async fn force_leave(&self, name: &str, prune: bool) -> Result<(), ForceLeaveError> {
        let (reply, answer) = oneshot::channel();
        let input = Input::ForceLeave {
            name: name.to_string(),
            prune,
            reply,
        };
        self.inputs
            .send(input)
            .await
            .map_err(|_| ForceLeaveError::Stopped)?;
        answer.await.map_err(|_| ForceLeaveError::Stopped)?
    }

    /// Fires a user event to every member (this one included); the event as sent.
    pub async fn fire(&self, event: UserEvent) -> Result<UserEvent, FireError> {
        let (reply, answer) = oneshot::channel();
        self.inputs
            .send(Input::Fire(event, reply))
            .await
            .map_err(|_| FireError::Stopped)?;
        answer.await.map_err(|_| FireError::Stopped)?
    }

    /// User events as they arrive (each once), this member's own included.
    pub fn user_events(&self) -> broadcast::Receiver<UserEvent> {
        self.user_events.subscribe()
    }

    pub fn events(&self) -> broadcast::Receiver<MemberEvent> {
        self.events.subscribe()
    }
}

type Scheduled = Reverse<(Instant, u64, TimerSlot)>;

/// A join waiting to hear back: the addresses announced to, the deadline, the caller.
type PendingJoin = (
    Vec<SocketAddr>,
    Instant,
    oneshot::Sender<Result<usize, JoinError>>,
);

/// A foca timer in the queue, ordered by foca's own order after the deadline.
#[derive(PartialEq, Eq)]
struct TimerSlot(Timer<NodeIdentity>);

impl PartialOrd for TimerSlot {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for TimerSlot {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

struct Run<T: Transport> {
    foca: Foca<NodeIdentity, Codec, rand_010::rngs::StdRng, messages::Handler>,
    runtime: AccumulatingRuntime<NodeIdentity>,
    timers: BinaryHeap<Scheduled>,
    /// Keeps timers due at the same instant in the order foca scheduled them.
    sequence: u64,
    transport: Arc<T>,
    events: broadcast::Sender<MemberEvent>,
    timings: GossipTimings,
    /// Joins waiting for an answer: the addresses announced to, and the deadline.
    joining: Vec<PendingJoin>,
    /// The pool size foca's timings were last derived from.
    size: usize,
    /// Where push-pull exchanges run, and how their answers come back.
    tasks: Tasks,
    inputs: mpsc::Sender<Input>,
    /// Broadcasts foca's handler took in, for this task to act on.
    heard: Heard,
    /// Members that went down, by name, until reaped.
    departed: BTreeMap<String, Departed>,
    /// Members that said they are leaving (name, incarnation), until they go down.
    leaving: HashSet<(String, u64)>,
    /// Prunes heard lately, passed on in push-pulls to members that missed them.
    prunes: Vec<(Instant, LeaveIntent)>,
    user_events: broadcast::Sender<UserEvent>,
    /// The user-event Lamport clock: the next event fired here gets this time.
    event_clock: u64,
    /// How messages are sealed and checked; its keyring changes with keyring queries.
    encryption: Encryption,
    encrypted: bool,
    /// Keyring queries this member asked, by id.
    queries: HashMap<u64, keyops::Pending>,
    /// Why an address refused our push-pull (or we could not read its answer), for joins.
    refusals: HashMap<SocketAddr, String>,
    dropped: Arc<AtomicU64>,
    /// When a refusal from each peer was last logged.
    drop_logged: HashMap<SocketAddr, Instant>,
    vivaldi: Vivaldi,
    /// Lifeguard-style local health: above 0 after this member's timers ran late, while it
    /// postpones declaring suspects down; decays by one per probe interval.
    awareness: u32,
    /// Coordinate probes sent and not yet answered: sequence → when.
    probes: HashMap<u64, Instant>,
    probe_sequence: u64,
    /// The coordinate each member last reported in a probe or its answer (Serf's coordinate
    /// cache), by member name.
    coordinates: HashMap<String, Coordinate>,
}

/// What two members exchange in a push-pull.
#[derive(serde::Serialize, serde::Deserialize)]
struct PoolState {
    members: Vec<foca::Member<NodeIdentity>>,
    intents: Vec<LeaveIntent>,
}

/// How long a prune is passed on in push-pulls (Serf's recent intent timeout).
const RECENT_PRUNES: Duration = Duration::from_secs(5 * 60);

impl<T: Transport> Run<T> {
    async fn run(mut self, mut queue: mpsc::Receiver<Input>) {
        let mut push_pull = tokio::time::interval(self.timings.push_pull_interval);
        push_pull.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reap = tokio::time::interval(REAP_EVERY);
        let mut reconnect = tokio::time::interval(self.timings.reconnect_interval);
        // One coordinate probe per probe interval, as memberlist piggybacks one on each ping.
        let mut measure = tokio::time::interval(self.timings.probe_interval);
        measure.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        reconnect.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        reap.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next_timer = self.timers.peek().map(|Reverse((at, _, _))| *at);
            let next_join = self.joining.iter().map(|(_, deadline, _)| *deadline).min();
            let next_query = self.queries.values().map(|query| query.deadline).min();
            let wake = [next_timer, next_join, next_query]
                .into_iter()
                .flatten()
                .min();
            tokio::select! {
                input = queue.recv() => match input {
                    // A member that left says nothing more, not even in push-pulls, which
                    // would tell the others it is alive: the task ends.
                    Some(input) => if !self.handle(input) {
                        return;
                    },
                    None => return,
                },
                _ = sleep_until(wake) => {}
                _ = push_pull.tick() => self.push_pull_with_random_member(),
                _ = reap.tick() => self.reap(),
                _ = reconnect.tick() => self.reconnect(),
                _ = measure.tick() => {
                    self.awareness = self.awareness.saturating_sub(1);
                    self.send_probe();
                }
            }
            // Lifeguard, in part: what already arrived is read before any timer fires, so a
            // member that was paused or starved hears the answers it missed before its own
            // overdue timers can accuse anyone.
            for _ in 0..INPUTS_BEFORE_TIMERS {
                match queue.try_recv() {
                    Ok(input) => {
                        if !self.handle(input) {
                            return;
                        }
                    }
                    Err(_) => break,
                }
            }
            self.fire_due_timers();
            self.settle_joins();
            self.settle_queries();
            self.adapt_to_size();
        }
    }

    /// Acts on one input; false once this member has left.
    fn handle(&mut self, input: Input) -> bool {
        match input {
            Input::Received(Received::Packet(from, frame)) => {
                match self.encryption.unframe(&frame) {
                    Ok((Kind::Gossip, bytes)) => {
                        match self.foca.handle_data(&bytes, &mut self.runtime) {
                            Ok(()) => {}
                            // Bytes that are not a gossip message are counted and logged.
                            Err(
                                foca::Error::MalformedPacket
                                | foca::Error::Decode(_)
                                | foca::Error::CustomBroadcast(_),
                            ) => self.dropped(from, &Refusal::Garbled),
                            Err(error) => tracing::debug!(%from, %error, "gossip packet refused"),
                        }
                    }
                    Ok((Kind::Ping, body)) => self.answer_probe(from, &body),
                    Ok((Kind::Pong, body)) => self.probe_answered(from, &body),
                    Ok((Kind::KeyResponse, _)) => self.dropped(from, &Refusal::Garbled),
                    Err(refusal) => self.dropped(from, &refusal),
                }
            }
            Input::Received(Received::Exchange(from, frame, reply)) => {
                let answer = match self.encryption.unframe(&frame) {
                    Ok((Kind::Gossip, theirs)) => {
                        self.apply_state(from, &theirs);
                        self.encryption.frame(Kind::Gossip, &self.encode_state())
                    }
                    Ok((Kind::KeyResponse, answer)) => {
                        self.key_answer_arrived(from, &answer);
                        self.encryption.frame(Kind::KeyResponse, &[])
                    }
                    Ok((Kind::Ping | Kind::Pong, _)) => {
                        self.dropped(from, &Refusal::Garbled);
                        Encryption::refusal(&Refusal::Garbled)
                    }
                    Err(refusal) => {
                        self.dropped(from, &refusal);
                        Encryption::refusal(&refusal)
                    }
                };
                let _ = reply.send(answer);
            }
            Input::Pulled(from, theirs) => match theirs {
                Ok(frame) => match self.encryption.unframe(&frame) {
                    Ok((Kind::Gossip, theirs)) => self.apply_state(from, &theirs),
                    Ok((Kind::KeyResponse | Kind::Ping | Kind::Pong, _)) => {
                        self.dropped(from, &Refusal::Garbled)
                    }
                    Err(refusal) => {
                        self.refusals.insert(from, refusal.to_string());
                        self.dropped(from, &refusal);
                    }
                },
                Err(error) => tracing::debug!(%from, %error, "push-pull failed"),
            },
            Input::Join(addresses, reply) => {
                for address in &addresses {
                    if let Err(error) = self
                        .foca
                        .announce(NodeIdentity::at(*address), &mut self.runtime)
                    {
                        tracing::debug!(%address, %error, "cannot announce");
                    }
                    // A join also exchanges full state, as memberlist's does.
                    self.push_pull(*address);
                }
                self.joining
                    .push((addresses, Instant::now() + JOIN_WAIT, reply));
            }
            Input::Members(reply) => {
                let _ = reply.send(self.members());
            }
            Input::Leave(reply) => {
                self.leave();
                let _ = reply.send(());
                return false;
            }
            Input::ForceLeave { name, prune, reply } => {
                let _ = reply.send(self.force_leave(&name, prune));
            }
            Input::Coordinates(reply) => {
                let _ = reply.send(self.coordinates());
            }
            Input::Coordinate(reply) => {
                let _ = reply.send(self.vivaldi.coordinate().clone());
            }
            Input::Keyring(op, reply) => {
                let members = self.foca.num_members() + 1;
                let id = rand::random::<u64>();
                let pending = keyops::Pending {
                    summary: KeySummary {
                        num_nodes: members,
                        ..KeySummary::default()
                    },
                    deadline: Instant::now() + keyops::timeout(&self.timings, members),
                    reply,
                };
                self.queries.insert(id, pending);
                let origin = self.foca.identity().addr;
                self.spread(&Broadcast::Key(KeyQuery { id, op, origin }));
            }
            Input::Fire(mut event, reply) => {
                event.ltime = self.event_clock;
                self.event_clock += 1;
                let broadcast = Broadcast::Event(event.clone());
                let size = broadcast.encode().len();
                let limit = MAX_BROADCAST;
                let _ = reply.send(match size <= limit {
                    true => {
                        self.spread(&broadcast);
                        Ok(event)
                    }
                    false => Err(FireError::TooLarge(size, limit)),
                });
            }
        }
        self.drain();
        true
    }

    fn leave(&mut self) {
        // The intent goes first (to a few members at once, then with every message foca
        // sends), so the down update that follows reads as a leave.
        let identity = self.foca.identity();
        let leave = Broadcast::Leave(LeaveIntent {
            name: identity.name.clone(),
            started: identity.started,
            prune: false,
        });
        self.spread(&leave);
        // One more round of gossip carries the intent further before the down update.
        if let Err(error) = self.foca.gossip(&mut self.runtime) {
            tracing::debug!(%error, "gossip before leaving");
        }
        if let Err(error) = self.foca.leave_cluster(&mut self.runtime) {
            tracing::debug!(%error, "leaving the gossip pool");
        }
        self.drain();
    }

    /// Our membership table, for a push-pull: foca's members and the leave intents that
    /// still matter (every member listed left, and recent prunes), as Serf's push-pull
    /// carries its left members, so an intent gossip missed converges anyway.
    fn encode_state(&self) -> Vec<u8> {
        let mut members: Vec<foca::Member<NodeIdentity>> =
            self.foca.iter_membership_state().cloned().collect();
        members.push(foca::Member::alive(self.foca.identity().clone()));
        let mut intents: Vec<LeaveIntent> = self
            .departed
            .values()
            .filter(|departed| departed.status == MemberStatus::Left)
            .map(|departed| LeaveIntent {
                name: departed.identity.name.clone(),
                started: departed.identity.started,
                prune: false,
            })
            .collect();
        intents.extend(self.prunes.iter().map(|(_, prune)| prune.clone()));
        bincode::serialize(&PoolState { members, intents }).unwrap_or_default()
    }

    /// Applies another member's table, spreading what was news.
    fn apply_state(&mut self, from: SocketAddr, state: &[u8]) {
        let PoolState { members, intents } = match super::codec::decode_whole(state) {
            Ok(state) => state,
            Err(error) => {
                tracing::debug!(%from, %error, "undecodable push-pull state");
                return;
            }
        };
        if let Err(error) = self
            .foca
            .apply_many(members.into_iter(), true, &mut self.runtime)
        {
            tracing::debug!(%from, %error, "push-pull state refused");
        }
        self.drain();
        // Through foca's handler, so what is news is also gossiped on.
        for leave in intents {
            if let Err(error) = self.foca.add_broadcast(&Broadcast::Leave(leave).encode()) {
                tracing::debug!(%from, %error, "push-pull intent refused");
            }
        }
    }

    /// Starts a push-pull with `address`; its answer comes back as `Input::Pulled`.
    fn push_pull(&self, address: SocketAddr) {
        let state = self.encryption.frame(Kind::Gossip, &self.encode_state());
        let exchange = self.transport.exchange(address, state);
        let inputs = self.inputs.clone();
        self.tasks.spawn("gossip.push_pull", async move {
            let theirs = exchange.await;
            let _ = inputs.send(Input::Pulled(address, theirs)).await;
        });
    }

    fn push_pull_with_random_member(&self) {
        let active: Vec<SocketAddr> = self
            .foca
            .iter_members()
            .map(|member| member.id().addr)
            .collect();
        if active.is_empty() {
            return;
        }
        let pick = active[rand::random::<usize>() % active.len()];
        self.push_pull(pick);
    }

    /// The member table: every active member, this one, and the departed not yet reaped.
    fn members(&self) -> Vec<Member> {
        let mut members: Vec<Member> = self
            .foca
            .iter_membership_state()
            .filter(|member| member.state() != State::Down)
            .map(|member| Member {
                identity: member.id().clone(),
                status: MemberStatus::Alive,
            })
            .collect();
        members.push(Member {
            identity: self.foca.identity().clone(),
            status: MemberStatus::Alive,
        });
        let active: HashSet<String> = members.iter().map(|m| m.identity.name.clone()).collect();
        members.extend(
            self.departed
                .values()
                .filter(|departed| !active.contains(&departed.identity.name))
                .map(|departed| Member {
                    identity: departed.identity.clone(),
                    status: departed.status,
                }),
        );
        members.sort_by(|a, b| a.identity.name.cmp(&b.identity.name));
        members
    }

    /// Hands `broadcast` to foca and sends it to a few members now.
    fn spread(&mut self, broadcast: &Broadcast) {
        match self.foca.add_broadcast(&broadcast.encode()) {
            Ok(_) => {
                if let Err(error) = self.foca.broadcast(&mut self.runtime) {
                    tracing::debug!(%error, "cannot send a gossip broadcast");
                }
            }
            Err(error) => tracing::warn!(%error, "gossip broadcast refused"),
        }
        // add_broadcast hands our own item to the handler too; it is acted on here.
        self.act_on_heard();
    }

    fn force_leave(&mut self, name: &str, prune: bool) -> Result<(), ForceLeaveError> {
        let Some(departed) = self.departed.get(name) else {
            let active = self.foca.iter_members().any(|m| m.id().name == name);
            // An alive member cannot be forced out (as Serf): it would refute at once.
            return match active {
                true => Ok(()),
                false => Err(ForceLeaveError::NoSuchMember(name.to_string())),
            };
        };
        let leave = Broadcast::Leave(LeaveIntent {
            name: name.to_string(),
            started: departed.identity.started,
            prune,
        });
        self.spread(&leave);
        Ok(())
    }

    /// Acts on the broadcasts foca's handler took in.
    fn act_on_heard(&mut self) {
        for broadcast in messages::take(&self.heard) {
            match broadcast {
                Broadcast::Leave(leave) => self.on_leave(leave),
                Broadcast::Key(query) => self.on_key_query(query),
                Broadcast::Event(event) => {
                    // Lamport: past any time seen, so a later fire here orders after it.
                    self.event_clock = self.event_clock.max(event.ltime + 1);
                    let _ = self.user_events.send(event);
                }
            }
        }
    }

    fn on_leave(&mut self, leave: LeaveIntent) {
        if leave.prune {
            let now = Instant::now();
            self.prunes
                .retain(|(at, _)| now.duration_since(*at) < RECENT_PRUNES);
            self.prunes.push((now, leave.clone()));
        }
        match self.departed.get_mut(&leave.name) {
            Some(departed) if departed.identity.started == leave.started => {
                if leave.prune {
                    if let Some(gone) = self.departed.remove(&leave.name) {
                        let _ = self.events.send(MemberEvent::Reaped(gone.identity));
                    }
                } else if departed.status != MemberStatus::Left {
                    departed.status = MemberStatus::Left;
                    departed.since = Instant::now();
                    let _ = self
                        .events
                        .send(MemberEvent::Left(departed.identity.clone()));
                }
            }
            _ => {
                let known = self
                    .foca
                    .iter_membership_state()
                    .any(|m| m.id().name == leave.name && m.id().started == leave.started);
                if known {
                    self.leaving.insert((leave.name, leave.started));
                }
            }
        }
    }

    /// Sends a coordinate probe to a random active member.
    fn send_probe(&mut self) {
        let now = Instant::now();
        self.probes
            .retain(|_, sent| now.duration_since(*sent) < PROBE_FORGET);
        let active: Vec<SocketAddr> = self
            .foca
            .iter_members()
            .map(|member| member.id().addr)
            .collect();
        if active.is_empty() {
            return;
        }
        let to = active[rand::random::<usize>() % active.len()];
        self.probe_sequence += 1;
        let probe = Probe {
            sequence: self.probe_sequence,
            name: self.foca.identity().name.clone(),
            coordinate: self.vivaldi.coordinate().clone(),
        };
        let body = bincode::serialize(&probe).unwrap_or_default();
        self.probes.insert(probe.sequence, now);
        self.transport
            .send(to, &self.encryption.frame(Kind::Ping, &body));
    }

    fn decode_probe(&mut self, from: SocketAddr, body: &[u8]) -> Option<Probe> {
        match super::codec::decode_whole::<Probe>(body) {
            Ok(probe) if probe.coordinate.is_valid() => Some(probe),
            _ => {
                self.dropped(from, &Refusal::Garbled);
                None
            }
        }
    }

    fn answer_probe(&mut self, from: SocketAddr, body: &[u8]) {
        let Some(probe) = self.decode_probe(from, body) else {
            return;
        };
        self.coordinates
            .insert(probe.name.clone(), probe.coordinate.clone());
        let answer = Probe {
            sequence: probe.sequence,
            name: self.foca.identity().name.clone(),
            coordinate: self.vivaldi.coordinate().clone(),
        };
        let body = bincode::serialize(&answer).unwrap_or_default();
        self.transport
            .send(from, &self.encryption.frame(Kind::Pong, &body));
    }

    fn probe_answered(&mut self, from: SocketAddr, body: &[u8]) {
        let Some(answer) = self.decode_probe(from, body) else {
            return;
        };
        if let Some(sent) = self.probes.remove(&answer.sequence) {
            self.vivaldi
                .update(&answer.name, &answer.coordinate, sent.elapsed());
        }
        self.coordinates.insert(answer.name, answer.coordinate);
    }

    /// This member's coordinate and every active member's last known one; members that are
    /// gone are forgotten here.
    fn coordinates(&mut self) -> Vec<(String, Coordinate)> {
        let active: std::collections::HashSet<String> = self
            .foca
            .iter_members()
            .map(|member| member.id().name.clone())
            .collect();
        self.coordinates.retain(|name, _| active.contains(name));
        let own = (
            self.foca.identity().name.clone(),
            self.vivaldi.coordinate().clone(),
        );
        std::iter::once(own)
            .chain(
                self.coordinates
                    .iter()
                    .map(|(name, coordinate)| (name.clone(), coordinate.clone())),
            )
            .collect()
    }

    /// Counts a refused message and logs it, at most once a minute per peer.
    fn dropped(&mut self, from: SocketAddr, refusal: &Refusal) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let recently = self
            .drop_logged
            .get(&from)
            .is_some_and(|at| now.duration_since(*at) < DROP_LOG_EVERY);
        if !recently {
            if self.drop_logged.len() > 1024 {
                self.drop_logged.clear();
            }
            self.drop_logged.insert(from, now);
            tracing::warn!(peer = %from, reason = %refusal, "gossip message dropped");
        }
    }

    /// Applies a keyring query here and answers whoever asked.
    fn on_key_query(&mut self, query: KeyQuery) {
        let result = keyops::apply(&mut self.encryption.keyring, &query.op);
        if let Err(error) = &result {
            tracing::warn!(%error, op = ?query.op, "keyring operation failed here");
        }
        let answer = KeyAnswer {
            id: query.id,
            node: self.foca.identity().name.clone(),
            error: result.err().map(|error| error.to_string()),
            keys: self.encryption.keyring.keys(),
        };
        if query.origin == self.foca.identity().addr {
            if let Some(pending) = self.queries.get_mut(&query.id) {
                pending.summary.add(&answer);
            }
            return;
        }
        let body = bincode::serialize(&answer).unwrap_or_default();
        let exchange = self.transport.exchange(
            query.origin,
            self.encryption.frame(Kind::KeyResponse, &body),
        );
        self.tasks.spawn("gossip.key_answer", async move {
            if let Err(error) = exchange.await {
                tracing::debug!(to = %query.origin, %error, "keyring answer not delivered");
            }
        });
    }

    fn key_answer_arrived(&mut self, from: SocketAddr, body: &[u8]) {
        let answer: KeyAnswer = match super::codec::decode_whole(body) {
            Ok(answer) => answer,
            Err(_) => return self.dropped(from, &Refusal::Garbled),
        };
        if let Some(pending) = self.queries.get_mut(&answer.id) {
            pending.summary.add(&answer);
        }
    }

    /// Answers the keyring queries that every member answered or whose time is up.
    fn settle_queries(&mut self) {
        let now = Instant::now();
        let done: Vec<u64> = self
            .queries
            .iter()
            .filter(|(_, pending)| pending.done(now))
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            if let Some(pending) = self.queries.remove(&id) {
                let _ = pending.reply.send(pending.summary);
            }
        }
    }

    /// Serf's reconnect: tries one failed member at random, with the probability that a
    /// random member would be failed, so a partition that healed rejoins both sides (each
    /// side sees the other failed and would otherwise never speak to it again).
    fn reconnect(&mut self) {
        let failed: Vec<SocketAddr> = self
            .departed
            .values()
            .filter(|departed| departed.status == MemberStatus::Failed)
            .map(|departed| departed.identity.addr)
            .collect();
        if failed.is_empty() {
            return;
        }
        let alive = self.foca.num_members() + 1;
        let chance = failed.len() as f64 / (failed.len() + alive) as f64;
        if rand::random::<f64>() >= chance {
            return;
        }
        let address = failed[rand::random::<usize>() % failed.len()];
        tracing::debug!(%address, "trying to reconnect to a failed member");
        if let Err(error) = self
            .foca
            .announce(NodeIdentity::at(address), &mut self.runtime)
        {
            tracing::debug!(%address, %error, "cannot announce to a failed member");
        }
        self.push_pull(address);
        self.drain();
    }

    /// Erases members departed longer than their timeout.
    fn reap(&mut self) {
        let now = Instant::now();
        let (reconnect, tombstone) = (
            self.timings.reconnect_timeout,
            self.timings.tombstone_timeout,
        );
        let expired: Vec<String> = self
            .departed
            .iter()
            .filter(|(_, departed)| {
                let limit = match departed.status {
                    MemberStatus::Left => tombstone,
                    _ => reconnect,
                };
                now.duration_since(departed.since) >= limit
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in expired {
            if let Some(gone) = self.departed.remove(&name) {
                tracing::info!(member = %name, "reaped a departed gossip member");
                let _ = self.events.send(MemberEvent::Reaped(gone.identity));
            }
        }
    }

    /// Records a member going down: left if it said so, failed otherwise.
    fn went_down(&mut self, identity: NodeIdentity) -> MemberEvent {
        let key = (identity.name.clone(), identity.started);
        let status = match self.leaving.remove(&key) {
            true => MemberStatus::Left,
            false => MemberStatus::Failed,
        };
        self.departed.insert(
            identity.name.clone(),
            Departed {
                identity: identity.clone(),
                status,
                since: Instant::now(),
            },
        );
        match status {
            MemberStatus::Left => MemberEvent::Left(identity),
            _ => MemberEvent::Failed(identity),
        }
    }

    fn fire_due_timers(&mut self) {
        let now = Instant::now();
        // A timer this late means this member was not running (paused, starved): it is the
        // one whose view is stale, so for a while it declares nobody down (Lifeguard's local
        // health awareness, scaled down: the score decays by one per probe interval).
        if let Some(Reverse((at, _, _))) = self.timers.peek() {
            if now.saturating_duration_since(*at) > self.timings.probe_interval {
                if self.awareness == 0 {
                    tracing::warn!(
                        late_ms = now.saturating_duration_since(*at).as_millis() as u64,
                        "gossip timers ran late; this member holds off declaring others down"
                    );
                }
                self.awareness = MAX_AWARENESS;
            }
        }
        let mut postponed = Vec::new();
        while self
            .timers
            .peek()
            .is_some_and(|Reverse((at, _, _))| *at <= now)
        {
            let Some(Reverse((_, _, TimerSlot(timer)))) = self.timers.pop() else {
                break;
            };
            if self.awareness > 0 && matches!(timer, Timer::ChangeSuspectToDown { .. }) {
                postponed.push(timer);
                continue;
            }
            if let Err(error) = self.foca.handle_timer(timer, &mut self.runtime) {
                tracing::debug!(%error, "gossip timer failed");
            }
            self.drain();
        }
        for timer in postponed {
            self.sequence += 1;
            self.timers.push(Reverse((
                now + self.timings.probe_interval,
                self.sequence,
                TimerSlot(timer),
            )));
        }
    }

    /// Answers joins that heard back (some member it announced to is now known) or whose
    /// wait is over.
    fn settle_joins(&mut self) {
        let now = Instant::now();
        let known: Vec<SocketAddr> = self
            .foca
            .iter_members()
            .map(|member| member.id().addr)
            .collect();
        let mut waiting = Vec::new();
        for (addresses, deadline, reply) in self.joining.drain(..) {
            let answered = addresses.iter().filter(|a| known.contains(a)).count();
            let refused = addresses
                .iter()
                .find_map(|a| self.refusals.get(a).map(|why| (*a, why.clone())));
            if answered > 0 {
                let _ = reply.send(Ok(answered));
            } else if let Some((address, why)) = refused {
                let _ = reply.send(Err(JoinError::Refused(address, why)));
            } else if now >= deadline {
                let _ = reply.send(Err(JoinError::Unreachable(addresses)));
            } else {
                waiting.push((addresses, deadline, reply));
            }
        }
        self.joining = waiting;
    }

    /// Re-derives suspicion and retransmission from the pool's size as it grows or shrinks
    /// by half (the probe timings themselves cannot change at run time).
    fn adapt_to_size(&mut self) {
        let size = self.foca.num_members() + 1;
        if size >= self.size * 2 || size * 2 <= self.size {
            self.size = size;
            if let Err(error) = self.foca.set_config(foca_config(&self.timings, size)) {
                tracing::debug!(%error, "cannot retune gossip for the pool's size");
            }
        }
    }

    /// Carries out what foca asked for: packets, timers, notifications.
    fn drain(&mut self) {
        // Intents first: a leave that came in the same packet as its down update makes it
        // a leave.
        self.act_on_heard();
        while let Some((to, bytes)) = self.runtime.to_send() {
            let frame = self.encryption.frame(Kind::Gossip, &bytes);
            self.transport.send(to.addr, &frame);
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            let after = scaled_by_awareness(after, &timer, self.awareness);
            self.sequence += 1;
            self.timers.push(Reverse((
                Instant::now() + after,
                self.sequence,
                TimerSlot(timer),
            )));
        }
        while let Some(notification) = self.runtime.to_notify() {
            let event = match notification {
                OwnedNotification::MemberUp(identity) => {
                    self.departed.remove(&identity.name);
                    MemberEvent::Joined(identity)
                }
                OwnedNotification::MemberDown(identity) => self.went_down(identity),
                OwnedNotification::Rename(old, new) => MemberEvent::Replaced { old, new },
                _ => continue,
            };
            let _ = self.events.send(event);
        }
    }
}

/// Lifeguard's local health awareness applied to probing: while this member's own timers run
/// late (`awareness` above 0), its probe interval and its wait for a direct answer stretch by
/// `awareness + 1`, as memberlist scales them, so a starved member gives others more time to
/// answer before it suspects them. Both stretch by the same factor, so foca's probe cycle keeps
/// its order (the indirect probe still comes before the next round).
pub(super) fn scaled_by_awareness(
    after: Duration,
    timer: &Timer<NodeIdentity>,
    awareness: u32,
) -> Duration {
    match timer {
        Timer::ProbeRandomMember(_) | Timer::SendIndirectProbe { .. } => after * (awareness + 1),
        _ => after,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
