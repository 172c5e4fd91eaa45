//! `/v1/agent/*` and `/v1/status/*`: what this agent is, its members, leaving, and the Raft
//! leader and peers.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use serde_json::{json, Value};

use super::error::ApiError;
use super::params::Call;
use super::reply;
use super::AppState;
use crate::acl::Access;
use crate::api::{human_version, CONCORD_VERSION, CONSUL_COMPAT_VERSION};
use crate::gossip::{Member, MemberStatus};

/// The pool a request names: the WAN pool with `?wan` (none on a client), else the LAN pool.
fn pool_for<'s>(
    state: &'s AppState,
    call: &Call,
) -> Option<(&'s crate::gossip::Pool, crate::gossip::lan::Area)> {
    use crate::gossip::lan::Area;
    match call.has("wan") {
        false => Some((&state.lan, Area::Lan)),
        true => state.wan.as_ref().map(|wan| (wan, Area::Wan)),
    }
}

/// What a client answers for the WAN pool, which only servers are in.
const NO_WAN: &str = "WAN pool is only available on servers";

/// A LAN member as Consul's `/v1/agent/members` shows it (serf's status numbers: 1 alive,
/// 2 leaving, 3 left, 4 failed).
fn member_json(member: &Member) -> Value {
    let identity = &member.identity;
    json!({
        "Name": identity.name,
        "Addr": identity.addr.ip().to_string(),
        "Port": identity.addr.port(),
        "Tags": identity.tags,
        "Status": match member.status {
            MemberStatus::Alive => 1,
            MemberStatus::Left => 3,
            MemberStatus::Failed => 4,
        },
        "ProtocolMin": 1,
        "ProtocolMax": 5,
        "ProtocolCur": 2,
        "DelegateMin": 2,
        "DelegateMax": 5,
        "DelegateCur": 4,
    })
}

/// This agent's own member entry.
fn local_member(state: &AppState) -> Value {
    member_json(&Member {
        identity: state.lan.identity().clone(),
        status: MemberStatus::Alive,
    })
}

pub async fn self_info(
    State(state): State<Arc<AppState>>,
    call: Call,
) -> Result<Response, ApiError> {
    state.authorizer.authorize(
        call.token().as_deref(),
        Access::AgentRead(&state.config.node_name),
    )?;
    let config = &state.config;
    let members = state.lan.members().await;
    let count = |status: MemberStatus| {
        members
            .iter()
            .filter(|member| member.status == status)
            .count()
            .to_string()
    };
    let (services, checks) = state.agent.services_and_checks();
    let leadership = state.cluster.leadership().borrow().clone();
    let acl = if state.authorizer.enabled() {
        "enabled"
    } else {
        "disabled"
    };
    // Consul's Stats values are all strings.
    let consul = match config.server_mode {
        true => json!({
            "server": "true",
            "leader": leadership.is_leader.to_string(),
            "leader_addr": leadership.leader_address,
            "bootstrap": (config.bootstrap_expect == 1).to_string(),
            "known_datacenters": "1",
            "acl": acl,
        }),
        false => json!({
            "server": "false",
            "known_servers": crate::rpc::client::servers_in(&members, &config.datacenter)
                .len()
                .to_string(),
            "acl": acl,
        }),
    };
    let body = json!({
        "Config": {
            "Datacenter": config.datacenter,
            "PrimaryDatacenter": config.primary_datacenter,
            "NodeName": config.node_name,
            "NodeID": state.node_id,
            "Revision": format!("concord-{CONCORD_VERSION}"),
            "Server": config.server_mode,
            "Version": CONSUL_COMPAT_VERSION,
            "BuildDate": "1970-01-01T00:00:00Z",
            "BindAddr": config.bind_addr.to_string(),
        },
        // Secrets (tokens, keys, passwords) show as "hidden", as in Consul.
        "DebugConfig": crate::config::redact::debug_config(config),
        "Coord": state.lan.coordinate().await,
        "Member": local_member(&state),
        "Stats": {
            "agent": {"services": services.len().to_string(), "checks": checks.len().to_string()},
            "consul": consul,
            "serf_lan": {
                "members": members.len().to_string(),
                "failed": count(MemberStatus::Failed),
                "left": count(MemberStatus::Left),
                "encrypted": state.lan.encrypted().to_string(),
            },
            "build": {"version": CONSUL_COMPAT_VERSION, "revision": format!("concord-{CONCORD_VERSION}"), "prerelease": ""},
            "raft": raft_stats(&state.cluster),
            "runtime": {
                "arch": std::env::consts::ARCH,
                "os": std::env::consts::OS,
                "cpu_count": std::thread::available_parallelism().map_or(1, |n| n.get()).to_string(),
                "goroutines": tokio::runtime::Handle::current().metrics().num_alive_tasks().to_string(),
                "max_procs": tokio::runtime::Handle::current().metrics().num_workers().to_string(),
            },
        },
        "Meta": config.node_meta,
        // Where Envoy reaches this agent's xDS server (`connect envoy` reads `XDS.Port`).
        // Consul's shape: `Port` is the plaintext port, else the TLS one.
        "xDS": match (config.ports.grpc, config.ports.grpc_tls) {
            (None, None) => Value::Null,
            (plaintext, tls) => json!({
                "SupportedProxies": {"envoy": [crate::xds::bootstrap::TESTED_ENVOY]},
                "Port": plaintext.or(tls),
                "Ports": {
                    "Plaintext": plaintext.map_or(-1, i32::from),
                    "TLS": tls.map_or(-1, i32::from),
                },
            }),
        },
    });
    Ok(reply::json(&body, call.pretty(&state)))
}

/// Consul's `raft` stats, from this server's Raft node; empty on a client, which has none.
fn raft_stats(cluster: &crate::rpc::Cluster) -> Value {
    let Some(raft) = cluster.raft_status() else {
        return json!({});
    };
    let last_contact = match raft.is_leader {
        true => "0".to_string(),
        false => format!("{}ms", raft.last_contact_ms),
    };
    json!({
        "state": raft.state,
        "term": raft.term.to_string(),
        "last_log_index": raft.last_log_index.to_string(),
        "applied_index": raft.applied_index.to_string(),
        "last_snapshot_index": raft.last_snapshot_index.to_string(),
        "num_peers": raft.peers.to_string(),
        "last_contact": last_contact,
    })
}

pub async fn version(State(state): State<Arc<AppState>>, call: Call) -> Response {
    let body = json!({
        "SHA": format!("concord-{CONCORD_VERSION}"),
        "BuildDate": "1970-01-01T00:00:00Z",
        "HumanVersion": human_version(),
        "FIPS": "",
    });
    reply::json(&body, call.pretty(&state))
}

pub async fn members(State(state): State<Arc<AppState>>, call: Call) -> Result<Response, ApiError> {
    let visible = super::reply::Visible::of(&state, &call)?;
    // Network segments are an Enterprise feature: as Consul's community edition, every member
    // is in the default segment, and asking for another is an error.
    match call.get("segment") {
        None | Some("" | "_all") => {}
        Some(_) if call.has("wan") => {
            return Err(ApiError::BadRequest(
                "Cannot provide a segment with wan=true".into(),
            ))
        }
        Some(_) => {
            return Err(ApiError::Internal(
                "Network segments are not supported in this version of Consul".into(),
            ))
        }
    }
    // Clients are in no WAN pool.
    let Some((pool, _)) = pool_for(&state, &call) else {
        return Ok(reply::json(&json!([]), call.pretty(&state)));
    };
    let members: Vec<Value> = pool
        .members()
        .await
        .iter()
        .filter(|member| visible.node(&member.identity.name))
        .map(member_json)
        .collect();
    Ok(visible.mark(reply::json(&Value::Array(members), call.pretty(&state))))
}

/// Graceful leave: answers, then shuts the agent down.
pub async fn leave(State(state): State<Arc<AppState>>, call: Call) -> Result<Response, ApiError> {
    state.authorizer.authorize(
        call.token().as_deref(),
        Access::AgentWrite(&state.config.node_name),
    )?;
    // As Consul, the reply comes once the leave has gone out; the agent then shuts down.
    tracing::info!("leave requested over HTTP; leaving and shutting down");
    state.lan.leave().await;
    if let Some(wan) = &state.wan {
        wan.leave().await;
    }
    state.stop.cancel();
    Ok(reply::json(&Value::Null, false))
}

/// `PUT /v1/agent/force-leave/:node`: marks a failed member left on every agent (`?prune`:
/// erases it at once), so the leader deregisters it.
pub async fn force_leave(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(node): axum::extract::Path<String>,
    call: Call,
) -> Result<Response, ApiError> {
    state
        .authorizer
        .authorize(call.token().as_deref(), Access::OperatorWrite)?;
    let (pool, _) = pool_for(&state, &call).ok_or_else(|| ApiError::Internal(NO_WAN.into()))?;
    pool.force_leave(&node, call.has("prune"))
        .await
        .map_err(|error| ApiError::Internal(error.to_string()))?;
    tracing::info!(%node, prune = call.has("prune"), "forced a member to leave");
    Ok(reply::json(&Value::Null, false))
}

pub async fn leader(State(state): State<Arc<AppState>>, call: Call) -> Response {
    reply::json(
        &Value::String(state.cluster.leadership().borrow().leader_address.clone()),
        call.pretty(&state),
    )
}

pub async fn peers(State(state): State<Arc<AppState>>, call: Call) -> Response {
    reply::json(&json!(state.cluster.peer_addresses()), call.pretty(&state))
}

/// `GET /v1/agent/monitor?loglevel=<level>`: streams log lines at or above the level until the
/// client goes away. A client that falls behind is told how many lines it missed.
pub async fn monitor(State(state): State<Arc<AppState>>, call: Call) -> Result<Response, ApiError> {
    state.authorizer.authorize(
        call.token().as_deref(),
        Access::AgentRead(&state.config.node_name),
    )?;
    let wanted = match call
        .get("loglevel")
        .unwrap_or("info")
        .to_ascii_lowercase()
        .as_str()
    {
        "trace" => tracing::Level::TRACE,
        "debug" => tracing::Level::DEBUG,
        "info" => tracing::Level::INFO,
        "warn" => tracing::Level::WARN,
        "err" | "error" => tracing::Level::ERROR,
        other => return Err(ApiError::BadRequest(format!("Unknown log level: {other}"))),
    };
    let receiver = crate::logs::subscribe();
    let shutdown = state.shutdown.clone();
    let lines = futures::stream::unfold(
        (receiver, shutdown),
        move |(mut receiver, shutdown)| async move {
            loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    next = receiver.recv() => next,
                };
                let text = match next {
                    // tracing orders levels by verbosity: TRACE is the "largest".
                    Ok(line) if line.level <= wanted => format!("{}\n", line.text),
                    Ok(_) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                        format!("[monitor fell behind; {missed} lines dropped]\n")
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                };
                let chunk: Result<hyper::body::Bytes, std::convert::Infallible> =
                    Ok(hyper::body::Bytes::from(text));
                return Some((chunk, (receiver, shutdown)));
            }
        },
    );
    Ok(axum::response::IntoResponse::into_response((
        [(axum::http::header::CONTENT_TYPE, "text/plain")],
        axum::body::Body::from_stream(lines),
    )))
}

/// `PUT /v1/agent/join/:address`: joining another agent needs the gossip pool, which this
/// release does not have; say so rather than pretend.
pub async fn join(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(address): axum::extract::Path<String>,
    call: Call,
) -> Result<Response, ApiError> {
    state.authorizer.authorize(
        call.token().as_deref(),
        Access::AgentWrite(&state.config.node_name),
    )?;
    let (pool, area) = pool_for(&state, &call).ok_or_else(|| ApiError::Internal(NO_WAN.into()))?;
    match crate::gossip::lan::join_area(pool, area, std::slice::from_ref(&address)).await {
        Ok(joined) => {
            tracing::info!(%address, joined, ?area, "joined the pool");
            Ok(reply::json(&Value::Null, false))
        }
        Err(error) => Err(ApiError::Internal(format!(
            "1 error occurred:\n\t* Failed to join {address}: {error}\n\n"
        ))),
    }
}
