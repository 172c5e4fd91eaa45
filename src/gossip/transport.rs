//! How gossip moves: a `Transport` sends a datagram to an address (probes and gossip), and
//! exchanges whole membership states with one member over a stream (memberlist's push-pull,
//! which is how a pool converges however many updates gossip lost). Everything that arrives
//! for this member comes out of one channel. Two implementations run the same test suite: UDP
//! datagrams with TCP exchanges on the same port (the agent's serf ports), and an in-memory
//! network in one process whose links a test can cut, so a 50-member cluster and a silent
//! member take no ports.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::tasks::Tasks;

/// What arrives for one member.
pub enum Received {
    /// A datagram: (sender's gossip address, bytes).
    Packet(SocketAddr, Vec<u8>),
    /// A push-pull: the sender's state, and where to put ours.
    Exchange(SocketAddr, Vec<u8>, oneshot::Sender<Vec<u8>>),
}

pub type Inbound = mpsc::Receiver<Received>;

/// Why a push-pull failed (the peer is unreachable, too slow, or sent too much).
#[derive(Clone, Debug, thiserror::Error)]
#[error("{0}")]
pub struct ExchangeError(String);

/// The answer to a push-pull: the other member's state.
pub type Exchanged = Pin<Box<dyn Future<Output = Result<Vec<u8>, ExchangeError>> + Send>>;

/// Largest state a push-pull carries either way (memberlist's is unbounded; ours is
/// explicit): 4 MiB is about 40,000 members.
pub const MAX_STATE: usize = 4 * 1024 * 1024;

/// How long one push-pull may take, connection included.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// How many received packets may wait for the pool's task; beyond that they are dropped (and
/// counted), as a busy UDP socket would drop them.
pub const INBOUND_BUFFER: usize = 1024;

/// Largest datagram read: foca's packets are at most its `max_packet_size` (1,400).
const MAX_DATAGRAM: usize = 65_535;

pub trait Transport: Send + Sync + 'static {
    /// Sends one datagram; losing it is allowed (gossip tolerates loss).
    fn send(&self, to: SocketAddr, bytes: &[u8]);
    /// Sends our state to `to` over a stream and returns its state.
    fn exchange(&self, to: SocketAddr, state: Vec<u8>) -> Exchanged;
    /// Where this member listens.
    fn local_addr(&self) -> SocketAddr;
}

/// Reads one length-prefixed frame of at most `MAX_STATE` bytes.
async fn read_frame(stream: &mut tokio::net::TcpStream) -> Result<Vec<u8>, String> {
    let length = stream.read_u32().await.map_err(|e| e.to_string())? as usize;
    if length > MAX_STATE {
        return Err(format!(
            "a push-pull state of {length} bytes is over {MAX_STATE}"
        ));
    }
    let mut frame = vec![0u8; length];
    stream
        .read_exact(&mut frame)
        .await
        .map_err(|e| e.to_string())?;
    Ok(frame)
}

async fn write_frame(stream: &mut tokio::net::TcpStream, frame: &[u8]) -> Result<(), String> {
    let length = u32::try_from(frame.len()).map_err(|_| "state too large".to_string())?;
    stream.write_u32(length).await.map_err(|e| e.to_string())?;
    stream.write_all(frame).await.map_err(|e| e.to_string())
}

/// A UDP socket on the gossip port.
pub struct UdpTransport {
    socket: Arc<tokio::net::UdpSocket>,
    local: SocketAddr,
}

impl UdpTransport {
    /// Binds UDP and TCP on `address` (the same port, as serf does) and starts the tasks that
    /// receive on them.
    pub async fn bind(
        address: SocketAddr,
        tasks: &Tasks,
    ) -> std::io::Result<(UdpTransport, Inbound)> {
        let (socket, listener) = bind_both(address).await?;
        let socket = Arc::new(socket);
        let local = socket.local_addr()?;
        let (deliver, inbound) = mpsc::channel(INBOUND_BUFFER);
        let receiving = socket.clone();
        let packets = deliver.clone();
        tasks.spawn("gossip.udp", async move {
            let mut buffer = vec![0u8; MAX_DATAGRAM];
            loop {
                match receiving.recv_from(&mut buffer).await {
                    Ok((length, from)) => {
                        let packet = Received::Packet(from, buffer[..length].to_vec());
                        if packets.try_send(packet).is_err() && packets.is_closed() {
                            return;
                        }
                    }
                    Err(error) => tracing::debug!(%error, "gossip UDP receive failed"),
                }
            }
        });
        let exchanges = tasks.clone();
        tasks.spawn("gossip.tcp", async move {
            loop {
                let Ok((mut stream, peer)) = listener.accept().await else {
                    continue;
                };
                let deliver = deliver.clone();
                exchanges.spawn("gossip.exchange", async move {
                    let answered = tokio::time::timeout(EXCHANGE_TIMEOUT, async {
                        let theirs = read_frame(&mut stream).await?;
                        let (reply, ours) = oneshot::channel();
                        deliver
                            .send(Received::Exchange(peer, theirs, reply))
                            .await
                            .map_err(|_| "the pool has stopped".to_string())?;
                        let ours = ours.await.map_err(|_| "no state".to_string())?;
                        write_frame(&mut stream, &ours).await
                    })
                    .await;
                    match answered {
                        Ok(Ok(())) => {}
                        Ok(Err(error)) => tracing::debug!(%peer, %error, "push-pull refused"),
                        Err(_) => tracing::debug!(%peer, "push-pull timed out"),
                    }
                });
            }
        });
        Ok((UdpTransport { socket, local }, inbound))
    }
}

/// UDP and TCP on one port. With port 0 the UDP socket picks a free port and TCP follows
/// it, which can be taken on TCP already; then another port is tried.
async fn bind_both(
    address: SocketAddr,
) -> std::io::Result<(tokio::net::UdpSocket, tokio::net::TcpListener)> {
    let mut attempts = if address.port() == 0 { 20 } else { 1 };
    loop {
        let socket = tokio::net::UdpSocket::bind(address).await?;
        match tokio::net::TcpListener::bind(socket.local_addr()?).await {
            Ok(listener) => return Ok((socket, listener)),
            Err(error) if attempts <= 1 => return Err(error),
            Err(_) => attempts -= 1,
        }
    }
}

impl Transport for UdpTransport {
    fn send(&self, to: SocketAddr, bytes: &[u8]) {
        if let Err(error) = self.socket.try_send_to(bytes, to) {
            tracing::debug!(%to, %error, "gossip UDP send failed");
        }
    }

    fn exchange(&self, to: SocketAddr, state: Vec<u8>) -> Exchanged {
        Box::pin(async move {
            tokio::time::timeout(EXCHANGE_TIMEOUT, async {
                let mut stream = tokio::net::TcpStream::connect(to)
                    .await
                    .map_err(|e| ExchangeError(e.to_string()))?;
                write_frame(&mut stream, &state)
                    .await
                    .map_err(ExchangeError)?;
                read_frame(&mut stream).await.map_err(ExchangeError)
            })
            .await
            .map_err(|_| ExchangeError(format!("push-pull with {to} timed out")))?
        })
    }

    fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

/// An in-memory network: members by address, and the links a test has cut.
#[derive(Clone, Default)]
pub struct MemoryNetwork {
    inner: Arc<Mutex<NetworkState>>,
}

#[derive(Default)]
struct NetworkState {
    members: HashMap<SocketAddr, mpsc::Sender<Received>>,
    /// Members whose packets go nowhere, in or out (a silent or partitioned member).
    silenced: HashSet<SocketAddr>,
}

impl MemoryNetwork {
    pub fn new() -> MemoryNetwork {
        MemoryNetwork::default()
    }

    /// A member at `address` on this network.
    pub fn attach(&self, address: SocketAddr) -> (MemoryTransport, Inbound) {
        let (deliver, inbound) = mpsc::channel(INBOUND_BUFFER);
        self.lock().members.insert(address, deliver);
        (
            MemoryTransport {
                network: self.clone(),
                local: address,
            },
            inbound,
        )
    }

    /// Cuts (or restores) every link of `address`.
    pub fn silence(&self, address: SocketAddr, silent: bool) {
        let mut state = self.lock();
        if silent {
            state.silenced.insert(address);
        } else {
            state.silenced.remove(&address);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NetworkState> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub struct MemoryTransport {
    network: MemoryNetwork,
    local: SocketAddr,
}

impl Transport for MemoryTransport {
    fn send(&self, to: SocketAddr, bytes: &[u8]) {
        let state = self.network.lock();
        if state.silenced.contains(&self.local) || state.silenced.contains(&to) {
            return;
        }
        if let Some(member) = state.members.get(&to) {
            let _ = member.try_send(Received::Packet(self.local, bytes.to_vec()));
        }
    }

    fn exchange(&self, to: SocketAddr, ours: Vec<u8>) -> Exchanged {
        let (local, network) = (self.local, self.network.clone());
        Box::pin(async move {
            let member = {
                let state = network.lock();
                if state.silenced.contains(&local) || state.silenced.contains(&to) {
                    return Err(ExchangeError(format!("no route to {to}")));
                }
                state.members.get(&to).cloned()
            }
            .ok_or_else(|| ExchangeError(format!("no member at {to}")))?;
            let (reply, theirs) = oneshot::channel();
            member
                .send(Received::Exchange(local, ours, reply))
                .await
                .map_err(|_| ExchangeError(format!("{to} has stopped")))?;
            tokio::time::timeout(EXCHANGE_TIMEOUT, theirs)
                .await
                .map_err(|_| ExchangeError(format!("push-pull with {to} timed out")))?
                .map_err(|_| ExchangeError(format!("{to} did not answer")))
        })
    }

    fn local_addr(&self) -> SocketAddr {
        self.local
    }
}
