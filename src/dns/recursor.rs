//! Forwarding names outside the domain to the configured recursors, one at a time in order
//! (`sequential`) or in a random order (`random`), each bounded by `recursor_timeout`. The
//! query is relayed as the client sent it, over the transport the client used; the first
//! response whose id matches is relayed back. `None` when every recursor failed.

use std::net::SocketAddr;
use std::time::Duration;

use rand::seq::SliceRandom;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use super::respond::Transport;
use crate::config::dns_config::RecursorStrategy;

pub async fn forward(
    query: &[u8],
    recursors: &[SocketAddr],
    strategy: RecursorStrategy,
    timeout: Duration,
    transport: Transport,
) -> Option<Vec<u8>> {
    let mut order: Vec<SocketAddr> = recursors.to_vec();
    if strategy == RecursorStrategy::Random {
        order.shuffle(&mut rand::thread_rng());
    }
    for recursor in order {
        let attempt = match transport {
            Transport::Udp => tokio::time::timeout(timeout, over_udp(query, recursor)).await,
            Transport::Tcp => tokio::time::timeout(timeout, over_tcp(query, recursor)).await,
        };
        match attempt {
            Ok(Ok(response)) => return Some(response),
            Ok(Err(error)) => tracing::debug!(%recursor, %error, "recursor failed"),
            Err(_) => tracing::debug!(%recursor, "recursor timed out"),
        }
    }
    None
}

async fn over_udp(query: &[u8], recursor: SocketAddr) -> std::io::Result<Vec<u8>> {
    {
        let local: SocketAddr = if recursor.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            ([0u16; 8], 0).into()
        };
        let socket = UdpSocket::bind(local).await?;
        socket.connect(recursor).await?;
        socket.send(query).await?;
        let mut buffer = vec![0u8; 65535];
        loop {
            let length = socket.recv(&mut buffer).await?;
            // Only the answer to this query: same id, and marked as a response.
            if length >= 12 && buffer[..2] == query[..2] && buffer[2] & 0x80 != 0 {
                buffer.truncate(length);
                return Ok(buffer);
            }
        }
    }
}

async fn over_tcp(query: &[u8], recursor: SocketAddr) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(recursor).await?;
    let length =
        u16::try_from(query.len()).map_err(|_| std::io::Error::other("query too large for TCP"))?;
    stream.write_all(&length.to_be_bytes()).await?;
    stream.write_all(query).await?;
    let mut prefix = [0u8; 2];
    stream.read_exact(&mut prefix).await?;
    let mut response = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
    stream.read_exact(&mut response).await?;
    if response.len() < 12 || response[..2] != query[..2] {
        return Err(std::io::Error::other("response does not match the query"));
    }
    Ok(response)
}
