//! Requests for other datacenters. An HTTP API request naming another datacenter (`?dc=`)
//! travels whole, as a `Request::Http`, to a server of that datacenter (found in the WAN
//! pool), which answers it with its own HTTP API; a client agent first hands it to one of its
//! servers. So every endpoint forwards the same way, blocking queries and consistency modes
//! included, and the remote datacenter applies its own ACLs to the token the request carries.
//! A DNS query naming another datacenter (`web.service.dc2.consul`) travels the same way and
//! is answered by that datacenter's DNS zone.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use tower::ServiceExt;

use super::connections::Connections;
use super::wire::{
    self, DnsForward, Frame, HttpAnswer, HttpForward, QueryDnsForward, Reply, Request,
};
use super::RpcError;
use crate::gossip::{MemberStatus, Pool};
use crate::state::query::failover_targets;
use crate::types::coordinate::Coordinate;
use crate::types::query::PreparedQuery;

/// The largest answer a forwarded request may bring back.
const MAX_ANSWER_BYTES: usize = 64 << 20;
/// How long a DNS query for another datacenter may wait for its answer.
const DNS_TIMEOUT_MS: u64 = 2_000;

/// This server's DNS, answering a query (as sent, and whether over TCP) with the encoded
/// response, or `None` for what it would not answer; a prepared query's lookup is answered
/// with the definition given, when one is. Given by the agent, which has the DNS module (it
/// comes after `rpc`).
pub type DnsAnswerer =
    Arc<dyn Fn(&[u8], bool, Option<&PreparedQuery>) -> Option<Vec<u8>> + Send + Sync>;

/// A server's side of federation: its datacenter, the WAN pool it finds other datacenters'
/// servers in, and the HTTP API that answers requests for its own datacenter. Both are set
/// once the agent has built them.
pub struct Federation {
    datacenter: String,
    wan: OnceLock<Pool>,
    http: OnceLock<axum::Router>,
    dns: OnceLock<DnsAnswerer>,
}

impl Federation {
    pub fn new(datacenter: String) -> Federation {
        Federation {
            datacenter,
            wan: OnceLock::new(),
            http: OnceLock::new(),
            dns: OnceLock::new(),
        }
    }

    pub fn set_wan(&self, wan: Pool) {
        let _ = self.wan.set(wan);
    }

    pub fn set_http(&self, http: axum::Router) {
        let _ = self.http.set(http);
    }

    pub fn set_dns(&self, dns: DnsAnswerer) {
        let _ = self.dns.set(dns);
    }

    /// Answers a forwarded HTTP request: here when it names this datacenter, else on a
    /// server of the one it names.
    pub async fn answer(
        &self,
        connections: &Connections,
        forward: HttpForward,
    ) -> Result<HttpAnswer, RpcError> {
        if forward.datacenter == self.datacenter {
            return self.answer_here(forward).await;
        }
        let (datacenter, timeout) = (forward.datacenter.clone(), forward.timeout_ms);
        let request = Request::Http(forward);
        match self
            .send(connections, &datacenter, request, timeout)
            .await?
        {
            Reply::Http(answer) => answer,
            _ => Err(super::mismatched()),
        }
    }

    /// Answers a forwarded DNS query the same way, with this datacenter's DNS zone.
    pub async fn answer_dns(
        &self,
        connections: &Connections,
        forward: DnsForward,
    ) -> Result<Vec<u8>, RpcError> {
        if forward.datacenter == self.datacenter {
            return self.dns_here(&forward.message, forward.tcp, None);
        }
        let datacenter = forward.datacenter.clone();
        match self
            .send(
                connections,
                &datacenter,
                Request::Dns(forward),
                DNS_TIMEOUT_MS,
            )
            .await?
        {
            Reply::Dns(answer) => answer,
            _ => Err(super::mismatched()),
        }
    }

    /// Answers a prepared query's DNS lookup: unaddressed, from the first datacenter it fails
    /// over to whose answer has records; addressed, in that datacenter with the definition
    /// sent.
    pub async fn answer_query_dns(
        &self,
        connections: &Connections,
        forward: QueryDnsForward,
    ) -> Result<Vec<u8>, RpcError> {
        let Some(datacenter) = forward.datacenter.clone() else {
            let known = self.datacenters().await;
            for target in failover_targets(&forward.query, &self.datacenter, &known) {
                let hop = QueryDnsForward {
                    datacenter: Some(target.clone()),
                    ..forward.clone()
                };
                match self
                    .send(connections, &target, Request::QueryDns(hop), DNS_TIMEOUT_MS)
                    .await
                {
                    Ok(Reply::Dns(Ok(answer))) if answer_count(&answer) > 0 => return Ok(answer),
                    Ok(_) => {}
                    Err(error) => {
                        tracing::debug!(datacenter = target, %error, "prepared query failover failed");
                    }
                }
            }
            return Err(RpcError::NoPathToDatacenter);
        };
        if datacenter == self.datacenter {
            return self.dns_here(&forward.message, forward.tcp, Some(&forward.query));
        }
        match self
            .send(
                connections,
                &datacenter,
                Request::QueryDns(forward),
                DNS_TIMEOUT_MS,
            )
            .await?
        {
            Reply::Dns(answer) => answer,
            _ => Err(super::mismatched()),
        }
    }

    fn dns_here(
        &self,
        message: &[u8],
        tcp: bool,
        query: Option<&PreparedQuery>,
    ) -> Result<Vec<u8>, RpcError> {
        let dns = self
            .dns
            .get()
            .ok_or_else(|| RpcError::Refused("this server's DNS is not running".into()))?;
        dns(message, tcp, query)
            .ok_or_else(|| RpcError::Refused("not a query this datacenter answers".into()))
    }

    /// Every datacenter with a server in the WAN pool that has not left: this one first, then
    /// the others by the median estimated round trip from this server to theirs (Consul's
    /// order), those without a coordinate last, ties by name.
    pub async fn datacenters(&self) -> Vec<String> {
        let (own, servers) = self.wan_view().await;
        let servers = servers
            .into_iter()
            .map(|server| (server.datacenter, server.coordinate))
            .collect();
        by_distance(&self.datacenter, own.as_ref(), servers)
    }

    /// The servers in the WAN pool that have not left, with their last known coordinates
    /// (this server's own included).
    pub async fn wan_servers(&self) -> Vec<WanServer> {
        self.wan_view().await.1
    }

    /// This server's WAN coordinate and the WAN pool's servers that have not left, from one
    /// read of the members and one of the coordinates.
    async fn wan_view(&self) -> (Option<Coordinate>, Vec<WanServer>) {
        let Some(wan) = self.wan.get() else {
            return (None, Vec::new());
        };
        let coordinates: std::collections::HashMap<String, Coordinate> =
            wan.coordinates().await.into_iter().collect();
        let servers = wan
            .members()
            .await
            .into_iter()
            .filter(|member| member.status != MemberStatus::Left)
            .filter_map(|member| {
                let tags = &member.identity.tags;
                let datacenter = tags.get("dc")?.clone();
                let rpc = tags
                    .get("port")
                    .and_then(|port| port.parse().ok())
                    .filter(|_| tags.get("role").map(String::as_str) == Some("consul"))
                    .map(|port| SocketAddr::new(member.identity.addr.ip(), port));
                Some(WanServer {
                    datacenter,
                    coordinate: coordinates.get(&member.identity.name).cloned(),
                    alive: member.status == MemberStatus::Alive,
                    rpc,
                    name: member.identity.name,
                })
            })
            .collect();
        (coordinates.get(&wan.identity().name).cloned(), servers)
    }

    /// Sends `request` to a live server of `datacenter`, trying each until one answers.
    async fn send(
        &self,
        connections: &Connections,
        datacenter: &str,
        request: Request,
        timeout_ms: u64,
    ) -> Result<Reply, RpcError> {
        let servers = self.servers_of(datacenter).await;
        if servers.is_empty() {
            return Err(RpcError::NoPathToDatacenter);
        }
        let timeout = Duration::from_millis(timeout_ms);
        let frame = Frame::encode(&request);
        let mut last_error = RpcError::NoPathToDatacenter;
        for server in servers {
            match connections
                .unary(server, wire::CALL_PATH, frame.clone(), timeout, false)
                .await
                .map(|answer| answer.decode::<Reply>())
            {
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(error)) => last_error = RpcError::Unreachable(error.to_string()),
                Err(error) => {
                    tracing::debug!(%server, %error, "a remote datacenter's server failed; trying the next");
                    last_error = RpcError::Unreachable(format!("{server}: {error}"));
                }
            }
        }
        Err(last_error)
    }

    /// The server RPC addresses of `datacenter`'s live servers, nearest first by their WAN
    /// coordinates (those without one last), as Consul's router tries them.
    async fn servers_of(&self, datacenter: &str) -> Vec<SocketAddr> {
        let (own, servers) = self.wan_view().await;
        let mut servers: Vec<(f64, SocketAddr)> = servers
            .into_iter()
            .filter(|server| server.alive && server.datacenter == datacenter)
            .filter_map(|server| {
                let distance = match (&own, &server.coordinate) {
                    (Some(own), Some(theirs)) => own.distance_to(theirs).as_secs_f64(),
                    _ => f64::MAX,
                };
                Some((distance, server.rpc?))
            })
            .collect();
        servers.sort_by(|a, b| a.0.total_cmp(&b.0));
        servers.into_iter().map(|(_, address)| address).collect()
    }

    async fn answer_here(&self, forward: HttpForward) -> Result<HttpAnswer, RpcError> {
        let http = self
            .http
            .get()
            .ok_or_else(|| RpcError::Refused("this server's HTTP API is not running".into()))?;
        let mut request = axum::http::Request::builder()
            .method(forward.method.as_str())
            .uri(forward.path_and_query.as_str());
        for (name, value) in &forward.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let request = request
            .body(Body::from(forward.body))
            .map_err(|error| RpcError::Refused(format!("malformed forwarded request: {error}")))?;
        let response = match http.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_string())))
            .collect();
        let body = axum::body::to_bytes(response.into_body(), MAX_ANSWER_BYTES)
            .await
            .map_err(|error| RpcError::Unreachable(format!("reading the answer: {error}")))?;
        Ok(HttpAnswer {
            status,
            headers,
            body: body.to_vec(),
        })
    }
}

/// A server in the WAN pool: its member name (`<node>.<dc>`), datacenter, coordinate,
/// whether it is alive, and its server RPC address (when it is a server that gave one).
#[derive(Clone, Debug)]
pub struct WanServer {
    pub name: String,
    pub datacenter: String,
    pub coordinate: Option<Coordinate>,
    pub alive: bool,
    pub rpc: Option<SocketAddr>,
}

/// `local` first, then the other datacenters of `servers` by the median distance from `own`
/// to their servers' coordinates; a datacenter with no coordinate known sorts last; ties by
/// name.
fn by_distance(
    local: &str,
    own: Option<&Coordinate>,
    servers: Vec<(String, Option<Coordinate>)>,
) -> Vec<String> {
    let mut rtts: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    for (datacenter, coordinate) in servers {
        let samples = rtts.entry(datacenter).or_default();
        if let (Some(own), Some(coordinate)) = (own, coordinate) {
            samples.push(own.distance_to(&coordinate).as_secs_f64());
        }
    }
    rtts.remove(local);
    let mut others: Vec<(f64, String)> = rtts
        .into_iter()
        .map(|(datacenter, mut samples)| (median(&mut samples), datacenter))
        .collect();
    others.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    std::iter::once(local.to_string())
        .chain(others.into_iter().map(|(_, datacenter)| datacenter))
        .collect()
}

/// The median of `samples` (the mean of the middle two for an even count), `f64::MAX` for none.
fn median(samples: &mut [f64]) -> f64 {
    if samples.is_empty() {
        return f64::MAX;
    }
    samples.sort_by(f64::total_cmp);
    let middle = samples.len() / 2;
    if samples.len().is_multiple_of(2) {
        (samples[middle - 1] + samples[middle]) / 2.0
    } else {
        samples[middle]
    }
}

/// The answer count of an encoded DNS response (its header's ANCOUNT).
fn answer_count(message: &[u8]) -> u16 {
    match message {
        [_, _, _, _, _, _, high, low, ..] => u16::from_be_bytes([*high, *low]),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(x: f64) -> Option<Coordinate> {
        let mut coordinate = Coordinate::default();
        coordinate.vec[0] = x;
        Some(coordinate)
    }

    #[test]
    fn datacenters_sort_by_the_median_distance_to_their_servers_unknown_last() {
        let servers = vec![
            ("dc1".to_string(), at(0.0)),
            // Median of 0.010, 0.020 and 0.300: 0.020.
            ("far".to_string(), at(0.010)),
            ("far".to_string(), at(0.300)),
            ("far".to_string(), at(0.020)),
            // Median of 0.005 and 0.025: 0.015.
            ("near".to_string(), at(0.005)),
            ("near".to_string(), at(0.025)),
            ("blind".to_string(), None),
            ("also-near".to_string(), at(0.015)),
        ];
        let own = Coordinate::default();
        assert_eq!(
            by_distance("dc1", Some(&own), servers.clone()),
            ["dc1", "also-near", "near", "far", "blind"]
        );
        // Without a coordinate of its own, this server orders the others by name.
        assert_eq!(
            by_distance("dc1", None, servers),
            ["dc1", "also-near", "blind", "far", "near"]
        );
    }
}
