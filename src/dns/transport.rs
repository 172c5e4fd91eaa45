//! The DNS listeners. UDP: a few tasks share the socket, each receiving a datagram and
//! answering it inline (an answer is a synchronous read of the snapshot, so there is nothing to
//! wait for); only what waits on another machine (recursion, another datacenter's answer, a
//! prepared query's failover) runs in its own task, at most `MAX_RECURSIONS_IN_FLIGHT` at once. TCP: at most `max_tcp_connections` connections, each a
//! task reading length-prefixed queries; a connection that does not finish a query within
//! `tcp_idle_timeout` (half a length prefix, a short body, or nothing) is closed.

use std::sync::Arc;

use super::recursor::forward;
use super::respond::{respond, Outcome, Transport};
use super::{Context, Limits};
use crate::tasks::Tasks;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;

/// Recursive lookups waiting on a recursor at once; beyond this a query gets SERVFAIL
/// rather than queueing without bound.
const MAX_RECURSIONS_IN_FLIGHT: usize = 256;

pub fn spawn(cx: Arc<Context>, udp: UdpSocket, tcp: TcpListener, limits: Limits, tasks: &Tasks) {
    let recursions = Arc::new(Semaphore::new(MAX_RECURSIONS_IN_FLIGHT));
    let udp = Arc::new(udp);
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 4));
    for _ in 0..workers {
        tasks.spawn(
            "dns.udp",
            serve_udp(cx.clone(), udp.clone(), recursions.clone(), tasks.clone()),
        );
    }
    tasks.spawn(
        "dns.tcp",
        serve_tcp(cx, tcp, limits, recursions, tasks.clone()),
    );
}

async fn serve_udp(
    cx: Arc<Context>,
    socket: Arc<UdpSocket>,
    recursions: Arc<Semaphore>,
    tasks: Tasks,
) {
    let shutdown = tasks.shutdown().clone();
    let mut buffer = vec![0u8; 65535];
    loop {
        let received = tokio::select! {
            received = socket.recv_from(&mut buffer) => received,
            _ = shutdown.cancelled() => return,
        };
        let (length, peer) = match received {
            Ok(received) => received,
            Err(error) => {
                tracing::debug!(%error, "DNS UDP receive failed");
                continue;
            }
        };
        if peer.port() == 0 {
            continue;
        }
        let query = &buffer[..length];
        match respond(&cx, query, Transport::Udp) {
            Outcome::Reply(reply) => {
                let _ = socket.send_to(&reply, peer).await;
            }
            Outcome::Drop => {}
            waiting => {
                let Ok(permit) = recursions.clone().try_acquire_owned() else {
                    let _ = socket.send_to(&busy(waiting), peer).await;
                    continue;
                };
                let (cx, socket, query) = (cx.clone(), socket.clone(), query.to_vec());
                tasks.spawn("dns.remote", async move {
                    let _permit = permit;
                    let reply = settle(&cx, waiting, query, Transport::Udp).await;
                    let _ = socket.send_to(&reply, peer).await;
                });
            }
        }
    }
}

/// The reply to an outcome that waits on another machine when no slot is free to wait in:
/// the failure it carries, or for a failover this datacenter's own answer.
fn busy(outcome: Outcome) -> Vec<u8> {
    match outcome {
        Outcome::Reply(reply) => reply,
        Outcome::Drop => Vec::new(),
        Outcome::Recurse { failed } | Outcome::Elsewhere { failed, .. } => failed,
        Outcome::Failover { local, .. } => local,
    }
}

/// The reply to `query` once what `outcome` waits on has answered (or failed).
async fn settle(cx: &Context, outcome: Outcome, query: Vec<u8>, transport: Transport) -> Vec<u8> {
    match outcome {
        Outcome::Recurse { failed } => recurse(cx, &query, transport).await.unwrap_or(failed),
        Outcome::Elsewhere {
            datacenter,
            unknown,
            failed,
        } => elsewhere(cx, datacenter, query, transport, unknown, failed).await,
        Outcome::Failover {
            query: definition,
            local,
        } => {
            let forward = crate::rpc::wire::QueryDnsForward {
                datacenter: None,
                query: definition,
                message: query,
                tcp: transport == Transport::Tcp,
            };
            // Nowhere else having an instance leaves this datacenter's answer standing.
            cx.cluster.failover_dns(forward).await.unwrap_or(local)
        }
        other => busy(other),
    }
}

/// The answer a server of `datacenter` gives to `query` (`rpc::federation`): `unknown` when
/// no server of it is known, `failed` when none answers.
async fn elsewhere(
    cx: &Context,
    datacenter: String,
    query: Vec<u8>,
    transport: Transport,
    unknown: Vec<u8>,
    failed: Vec<u8>,
) -> Vec<u8> {
    let forward = crate::rpc::wire::DnsForward {
        datacenter,
        message: query,
        tcp: transport == Transport::Tcp,
    };
    match cx.cluster.forward_dns(forward).await {
        Ok(reply) => reply,
        Err(crate::rpc::RpcError::NoPathToDatacenter) => unknown,
        Err(error) => {
            tracing::debug!(%error, "a DNS query for another datacenter went unanswered");
            failed
        }
    }
}

async fn recurse(cx: &Context, query: &[u8], transport: Transport) -> Option<Vec<u8>> {
    forward(
        query,
        &cx.config.recursors,
        cx.config.recursor_strategy,
        cx.config.recursor_timeout,
        transport,
    )
    .await
}

async fn serve_tcp(
    cx: Arc<Context>,
    listener: TcpListener,
    limits: Limits,
    recursions: Arc<Semaphore>,
    tasks: Tasks,
) {
    let shutdown = tasks.shutdown().clone();
    let connections = Arc::new(Semaphore::new(limits.max_tcp_connections));
    loop {
        // Accept only with a free slot, so excess clients wait in the kernel's backlog.
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            _ = shutdown.cancelled() => return,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::debug!(%error, "DNS TCP accept failed");
                continue;
            }
        };
        let (cx, recursions) = (cx.clone(), recursions.clone());
        tasks.spawn("dns.connection", async move {
            let _permit = permit;
            connection(&cx, stream, limits, &recursions).await;
        });
    }
}

/// Serves one TCP connection until the client closes it, stalls past the idle timeout, or
/// sends something that is not a query.
async fn connection(cx: &Context, mut stream: TcpStream, limits: Limits, recursions: &Semaphore) {
    let idle = limits.tcp_idle_timeout;
    loop {
        let mut prefix = [0u8; 2];
        if !matches!(
            tokio::time::timeout(idle, stream.read_exact(&mut prefix)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        let length = usize::from(u16::from_be_bytes(prefix));
        if length == 0 {
            return;
        }
        let mut query = vec![0u8; length];
        if !matches!(
            tokio::time::timeout(idle, stream.read_exact(&mut query)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        let reply = match respond(cx, &query, Transport::Tcp) {
            Outcome::Reply(reply) => reply,
            Outcome::Drop => return,
            waiting => match recursions.try_acquire() {
                Ok(_permit) => settle(cx, waiting, query, Transport::Tcp).await,
                Err(_) => busy(waiting),
            },
        };
        let Ok(length) = u16::try_from(reply.len()) else {
            return;
        };
        let mut framed = Vec::with_capacity(reply.len() + 2);
        framed.extend_from_slice(&length.to_be_bytes());
        framed.extend_from_slice(&reply);
        if !matches!(
            tokio::time::timeout(idle, stream.write_all(&framed)).await,
            Ok(Ok(()))
        ) {
            return;
        }
    }
}
