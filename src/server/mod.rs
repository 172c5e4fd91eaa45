//! Wires one agent together and owns its lifetime: data dir and node id, the LAN pool, on a
//! server Raft storage, the Raft node, the server RPC listener and the leader's duties, on a
//! client the seam that follows a server; the HTTP, DNS and xDS listeners; and graceful
//! shutdown on SIGINT, SIGTERM or `PUT /v1/agent/leave`, leaving the pool first when
//! `leave_on_terminate` / `skip_leave_on_interrupt` say so.
//!
//! Architecture invariant: every long-lived task is spawned through one `Tasks` under one
//! shutdown token; `run` waits for them (up to a limit) before it returns, so nothing
//! outlives it.

mod acl;
pub mod autopilot;
mod coordinate_sync;
pub mod formation;
mod leader;
pub mod members;
mod replication;
mod watches;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use openraft::BasicNode;
use tokio_util::sync::CancellationToken;

use crate::acl::Authorizer;
use crate::agent::Agent;
use crate::config::{LoadOptions, RuntimeConfig};
use crate::http::{self, AppState};
use crate::raft::{self, node_id_from_uuid, Raft};
use crate::rpc::connections::Connections;
use crate::rpc::raft_network::{Network, PeerContacts};
use crate::rpc::service::RpcService;
use crate::rpc::{ClientRpc, Cluster, ServerRpc};
use crate::state::Store;
use crate::tasks::Tasks;

/// Reads the node id persisted in the data dir, or makes and persists one. A file that exists
/// but does not hold a UUID is an error: silently replacing it would give the node a new
/// identity.
fn resolve_node_id(config: &RuntimeConfig, data_dir: &Path) -> anyhow::Result<String> {
    if let Some(id) = &config.node_id {
        uuid::Uuid::parse_str(id).with_context(|| format!("node_id {id:?} is not a UUID"))?;
        return Ok(id.to_lowercase());
    }
    let path = data_dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            uuid::Uuid::parse_str(id).with_context(|| {
                format!(
                    "{} is corrupt (expected a UUID); refusing to start with a new node identity",
                    path.display()
                )
            })?;
            Ok(id.to_string())
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let id = uuid::Uuid::new_v4().to_string();
            std::fs::write(&path, &id)
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(id)
        }
        Err(error) => Err(error).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// The data dir, and in dev mode the temporary directory that backs it (removed on drop).
fn prepare_data_dir(
    config: &RuntimeConfig,
) -> anyhow::Result<(PathBuf, Option<tempfile::TempDir>)> {
    match &config.data_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create data dir {}", dir.display()))?;
            Ok((dir.clone(), None))
        }
        None => {
            let temp = tempfile::Builder::new()
                .prefix("concord-dev-")
                .tempdir()
                .context("cannot create a temporary data dir for -dev")?;
            Ok((temp.path().to_path_buf(), Some(temp)))
        }
    }
}

/// What a server runs besides what every agent runs.
struct ServerParts {
    rpc: Arc<ServerRpc>,
    raft: Raft,
}

/// Opens Raft storage, starts the Raft node (bootstrapping a one-server cluster when asked)
/// and the server's side of the seam.
async fn start_server(
    config: &RuntimeConfig,
    data_dir: &Path,
    node_id: &str,
    tls: &Arc<crate::tls::Tls>,
    tasks: &Tasks,
) -> anyhow::Result<ServerParts> {
    let store = Arc::new(Store::keeping_values_in(data_dir));
    let mut storage = raft::open_storage(data_dir, store.clone()).await?;
    let raft_id = node_id_from_uuid(node_id);
    raft::recover_from_peers_file(data_dir, &mut storage, raft_id).await?;
    let server_address =
        SocketAddr::new(config.advertise_addr, config.ports.server.unwrap_or(8300));
    let connections = Arc::new(Connections::new(config.bind_addr, tls.clone()));
    let contacts = Arc::new(PeerContacts::default());
    let raft = Raft::new(
        raft_id,
        raft::openraft_config(&config.raft)?,
        Network::new(connections.clone(), contacts.clone()),
        storage.log_store,
        storage.state_machine,
    )
    .await
    .context("cannot start Raft")?;
    if config.bootstrap_expect == 1 && !raft.is_initialized().await? {
        let members = BTreeMap::from([(raft_id, BasicNode::new(server_address))]);
        raft.initialize(members)
            .await
            .context("cannot bootstrap the Raft cluster")?;
        tracing::info!(node_id = %node_id, "bootstrapped a new single-server cluster");
    }
    let rpc = ServerRpc::start(
        raft.clone(),
        connections,
        store,
        raft_id,
        crate::rpc::Datacenters {
            local: config.datacenter.clone(),
            primary: config.primary_datacenter.clone(),
        },
        contacts,
        tasks,
    );
    crate::rpc::election::start(&rpc, tasks);
    Ok(ServerParts { rpc, raft })
}

/// A client agent under auto_encrypt: gets its certificate from a server at one of its join
/// addresses (on this agent's server port, as Consul asks) before anything else talks to
/// the servers, then keeps it renewed.
async fn auto_encrypt_client(
    config: &RuntimeConfig,
    node_id: &str,
    tls: &Arc<crate::tls::Tls>,
    tasks: &Tasks,
) -> anyhow::Result<()> {
    use crate::rpc::auto_encrypt;
    let port = config.ports.server.unwrap_or(8300);
    let lan = &config.membership.lan;
    let mut servers = Vec::new();
    for address in lan.start_join.iter().chain(&lan.retry_join) {
        // Resolved as joins are, one at a time (an unresolvable one skips only itself), then
        // asked on the server port.
        match crate::gossip::lan::resolve(std::slice::from_ref(address), port).await {
            Ok(found) => servers.extend(found.into_iter().map(|at| SocketAddr::new(at.ip(), port))),
            Err(error) => tracing::warn!(%address, %error, "auto_encrypt: cannot resolve"),
        }
    }
    let tokens = &config.acl.tokens;
    let requester = auto_encrypt::Requester {
        node: config.node_name.clone(),
        node_id: node_id.to_string(),
        datacenter: config.datacenter.clone(),
        token: tokens
            .agent
            .clone()
            .or_else(|| tokens.default.clone())
            .unwrap_or_default(),
        bind: config.bind_addr,
    };
    let shutdown = tasks.shutdown().clone();
    let Some(expires) =
        auto_encrypt::obtain_until_given(tls, &servers, &requester, &shutdown).await
    else {
        anyhow::bail!("stopped before auto_encrypt got a certificate");
    };
    tasks.spawn(
        "auto_encrypt.renew",
        auto_encrypt::keep_renewed(tls.clone(), servers, requester, expires, shutdown),
    );
    Ok(())
}

/// A server with auto_encrypt.allow_tls trusts the Connect CA's roots (its client agents'
/// certificates chain to them) on the server port, following every change of them.
async fn trust_connect_roots(
    cluster: Cluster,
    tls: Arc<crate::tls::Tls>,
    shutdown: CancellationToken,
) {
    let topic = crate::state::connect::CA_TOPIC.to_string();
    let mut trusted: Vec<String> = Vec::new();
    loop {
        let guard = cluster.watch(&[(topic.clone(), crate::state::Match::Exact)]);
        let roots: Vec<String> = cluster
            .snapshot()
            .ca()
            .map(|ca| ca.roots.iter().map(|root| root.cert_pem.clone()).collect())
            .unwrap_or_default();
        if roots != trusted {
            match tls.set_connect_roots(roots.clone()) {
                Ok(()) => trusted = roots,
                Err(error) => tracing::warn!(%error, "cannot trust the Connect CA's roots"),
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = guard.changed() => {}
        }
    }
}

/// Runs the agent until it is asked to stop.
pub async fn run(config: RuntimeConfig, load_options: LoadOptions) -> anyhow::Result<()> {
    let started = Instant::now();
    crate::telemetry::install(&config.telemetry);
    let config = Arc::new(config);
    let (data_dir, temp_dir) = prepare_data_dir(&config)?;
    let node_id = resolve_node_id(&config, &data_dir)?;
    // Bad certificate files stop the agent here, named in the error.
    let tls = crate::tls::Tls::load(
        &config.tls,
        &config.datacenter,
        &config.dns.domain,
        config.ports.https.is_some(),
        config.ports.grpc_tls.is_some(),
    )?;

    // Every long-lived task below is spawned through `tasks`, under its shutdown token.
    let tasks = Tasks::new();
    // Asked to stop (HTTP leave, an exhausted retry_join): the agent leaves the pool first,
    // then shuts its tasks down.
    let stop = CancellationToken::new();
    let lan = crate::gossip::lan::start(&config, &node_id, &data_dir, &tasks).await?;
    let wan = crate::gossip::lan::start_wan(&config, &node_id, &data_dir, &tasks).await?;
    let server = match config.server_mode {
        true => Some(start_server(&config, &data_dir, &node_id, &tls, &tasks).await?),
        false => None,
    };
    if server.is_none() && config.tls.auto_encrypt.tls {
        auto_encrypt_client(&config, &node_id, &tls, &tasks).await?;
    }
    let cluster = match &server {
        Some(server) => Cluster::Server(server.rpc.clone()),
        None => Cluster::Client(ClientRpc::start(
            config.node_name.clone(),
            config.bind_addr,
            tls.clone(),
            lan.clone(),
            &tasks,
        )),
    };
    // Filled in once the ACL authorizer exists, for auto_encrypt's token checks.
    let rpc_authorizer = std::sync::Arc::new(std::sync::OnceLock::new());
    if let (Some(server), Some(port)) = (&server, config.ports.server) {
        let address = SocketAddr::new(config.bind_addr, port);
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen for server RPC on {address}"))?;
        tracing::info!(%address, "server RPC listening");
        let service = RpcService::new(
            server.rpc.clone(),
            tls.clone(),
            rpc_authorizer.clone(),
            tasks.shutdown().clone(),
        );
        tasks.spawn_graceful(
            "rpc.listener",
            crate::rpc::service::serve(listener, service, tasks.shutdown().clone()),
        );
    }
    if let (Some(server), expect @ 2..) = (&server, config.bootstrap_expect) {
        tasks.spawn(
            "server.formation",
            formation::bootstrap_when_expected(
                server.rpc.clone(),
                lan.clone(),
                config.datacenter.clone(),
                expect,
                tasks.shutdown().clone(),
            ),
        );
    }
    let membership = &config.membership;
    crate::gossip::lan::join_configured(
        &lan,
        &membership.lan,
        crate::gossip::lan::Area::Lan,
        &stop,
        &tasks,
    )
    .await?;
    match &wan {
        Some(wan) => {
            crate::gossip::lan::join_configured(
                wan,
                &membership.wan,
                crate::gossip::lan::Area::Wan,
                &stop,
                &tasks,
            )
            .await?
        }
        None if !membership.wan.start_join.is_empty() || !membership.wan.retry_join.is_empty() => {
            tracing::warn!("start_join_wan and retry_join_wan apply to servers only; ignored")
        }
        None => {}
    }
    let authorizer = {
        let cluster = cluster.clone();
        Authorizer::new(
            config.acl.clone(),
            config.datacenter.clone(),
            Arc::new(move || cluster.snapshot()),
        )
        .persisting_tokens(data_dir.join("acl-tokens.json"))
        .context("cannot read the persisted agent tokens")?
    };

    let _ = rpc_authorizer.set(authorizer.clone());
    if let (Some(_), true) = (&server, config.tls.auto_encrypt.allow_tls) {
        tasks.spawn(
            "tls.connect_roots",
            trust_connect_roots(cluster.clone(), tls.clone(), tasks.shutdown().clone()),
        );
    }
    let agent = Agent::start(
        config.clone(),
        load_options,
        &data_dir,
        node_id.clone(),
        cluster.clone(),
        tasks.clone(),
    )
    .map_err(|error| anyhow::anyhow!("cannot register the configured services: {error}"))?;
    agent.reload_tls_with(tls.clone());
    let leaves = crate::agent::leaf::LeafCache::new(
        cluster.clone(),
        agent.clone(),
        Some(data_dir.join("connect").join("leaf")),
        config.datacenter.clone(),
        tasks.clone(),
        config.limits.connect_leaf_idle_timeout,
    );
    let xds_status = Arc::new(crate::xds::XdsStatus::default());
    let proxies = crate::proxycfg::Watcher::new(
        cluster.clone(),
        leaves.clone(),
        config.node_name.clone(),
        config.datacenter.clone(),
        crate::connect::intention::DefaultPolicy::new(
            config.default_intention_policy.as_deref(),
            authorizer.default_policy(),
        ),
        tasks.clone(),
    );
    let state = Arc::new(AppState {
        cluster: cluster.clone(),
        leaves,
        xds: xds_status.clone(),
        agent: agent.clone(),
        tasks: tasks.clone(),
        config: config.clone(),
        authorizer: authorizer.clone(),
        node_id: node_id.clone(),
        events: crate::agent::events::EventLog::start(&lan, agent.clone(), &tasks),
        lan: lan.clone(),
        wan: wan.clone(),
        stop: stop.clone(),
        shutdown: tasks.shutdown().clone(),
    });
    // A server answers other datacenters' requests with its own HTTP API, and finds theirs
    // in the WAN pool (whether or not it listens for HTTP itself).
    if let Some(server) = &server {
        server.rpc.federation.set_http(http::router(state.clone()));
        if let Some(wan) = &wan {
            server.rpc.federation.set_wan(wan.clone());
        }
    }
    if let Some(port) = config.ports.http {
        for address in &config.client_addrs {
            let address = SocketAddr::new(*address, port);
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen for HTTP on {address}"))?;
            let app = http::router(state.clone());
            let stop = tasks.shutdown().clone();
            tracing::info!(%address, "HTTP API listening");
            tasks.spawn_graceful("http.listener", async move {
                let served = axum::serve(listener, app)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await;
                if let Err(error) = served {
                    tracing::error!(%error, "HTTP server failed");
                }
            });
        }
    }
    if let Some(port) = config.ports.https {
        for address in &config.client_addrs {
            let address = SocketAddr::new(*address, port);
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen for HTTPS on {address}"))?;
            let (incoming, accepting) = crate::tls::listen::accept(
                listener,
                crate::tls::listen::Kind::Https,
                tls.clone(),
                tasks.shutdown().clone(),
            );
            let app = http::router(state.clone());
            let stop = tasks.shutdown().clone();
            tracing::info!(%address, "HTTPS API listening");
            tasks.spawn("https.accept", accepting);
            tasks.spawn_graceful("https.listener", async move {
                let served = axum::serve(incoming, app)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await;
                if let Err(error) = served {
                    tracing::error!(%error, "HTTPS server failed");
                }
            });
        }
    }
    // Watches read this agent's own HTTP API: its first listener, the loopback address when
    // that listener takes every address.
    let own_http = config.ports.http.and_then(|port| {
        config.client_addrs.first().map(|address| {
            let address = match address.is_unspecified() {
                true => std::net::IpAddr::from([127, 0, 0, 1]),
                false => *address,
            };
            SocketAddr::new(address, port)
        })
    });
    watches::start(&config.watches, own_http, &tasks);
    let grpc_ports = [
        (config.ports.grpc, None, "gRPC (xDS)"),
        (config.ports.grpc_tls, Some(tls.clone()), "gRPC-TLS (xDS)"),
    ];
    for (port, tls, what) in grpc_ports {
        let Some(port) = port else { continue };
        for address in &config.client_addrs {
            let address = SocketAddr::new(*address, port);
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen for {what} on {address}"))?;
            tracing::info!(%address, "{what} listening");
            let server = crate::xds::XdsServer {
                watcher: proxies.clone(),
                agent: agent.clone(),
                authorizer: authorizer.clone(),
                status: xds_status.clone(),
                tasks: tasks.clone(),
            };
            tasks.spawn_graceful(
                "xds.listener",
                crate::xds::serve(
                    listener,
                    tls.clone(),
                    server,
                    config.limits.xds_max_streams,
                    tasks.shutdown().clone(),
                ),
            );
        }
    }
    if let Some(port) = config.ports.dns {
        let dns = Arc::new(crate::dns::Context::new(
            config.dns.clone(),
            config.datacenter.clone(),
            cluster.clone(),
            authorizer.clone(),
            &config.node_name,
        ));
        if let Some(server) = &server {
            let dns = dns.clone();
            server
                .rpc
                .federation
                .set_dns(Arc::new(move |message, tcp, sent| {
                    let transport = match tcp {
                        true => crate::dns::Transport::Tcp,
                        false => crate::dns::Transport::Udp,
                    };
                    let outcome = match sent {
                        Some(query) => {
                            crate::dns::respond::respond_sent(&dns, message, transport, query)
                        }
                        None => crate::dns::respond(&dns, message, transport),
                    };
                    // A query asked from elsewhere fails over only where it was asked.
                    match outcome {
                        crate::dns::Outcome::Reply(reply)
                        | crate::dns::Outcome::Failover { local: reply, .. } => Some(reply),
                        _ => None,
                    }
                }));
        }
        let limits = crate::dns::Limits {
            tcp_idle_timeout: config.limits.dns_tcp_idle_timeout,
            max_tcp_connections: config.limits.dns_max_tcp_connections,
        };
        for address in &config.dns.addresses {
            crate::dns::listen(dns.clone(), SocketAddr::new(*address, port), limits, &tasks)
                .await?;
        }
    }
    tasks.spawn(
        "agent.coordinate_sync",
        coordinate_sync::run(
            cluster.clone(),
            lan.clone(),
            config.clone(),
            tasks.shutdown().clone(),
        ),
    );
    if let Some(server) = &server {
        let (rpc, shutdown) = (server.rpc.clone(), tasks.shutdown().clone());
        tasks.spawn("rpc.session_ttl", async move {
            rpc.sessions.run(&rpc, shutdown).await
        });
        for job in replication::jobs(&config) {
            tasks.spawn(
                "server.replication",
                replication::run(
                    server.rpc.clone(),
                    config.clone(),
                    job,
                    tasks.shutdown().clone(),
                ),
            );
        }
        tasks.spawn(
            "server.leader",
            leader::run(
                server.rpc.clone(),
                config.clone(),
                node_id,
                lan.clone(),
                tasks.shutdown().clone(),
            ),
        );
    }
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        node = %config.node_name,
        node_id = %state.node_id,
        datacenter = %config.datacenter,
        data_dir = %data_dir.display(),
        "agent started"
    );

    let reason = wait_for_stop(&stop, &state.agent).await;
    let leave = match reason {
        // A leave over HTTP has left already; a stop for any other reason (retry_max) never
        // joined.
        Stop::Requested => false,
        Stop::Interrupt => !config.membership.skip_leave_on_interrupt,
        Stop::Terminate => config.membership.leave_on_terminate,
    };
    if leave {
        tracing::info!("leaving the LAN pool");
        lan.leave().await;
        if let Some(wan) = &wan {
            wan.leave().await;
        }
    }
    tracing::info!("shutting down");
    if !tasks.stop(SHUTDOWN_LIMIT).await {
        tracing::warn!(alive = ?tasks.alive(), "tasks did not stop within {SHUTDOWN_LIMIT:?}");
    }
    if let Some(server) = server {
        if let Err(error) = server.raft.shutdown().await {
            tracing::warn!(%error, "Raft did not shut down cleanly");
        }
    }
    drop(temp_dir);
    tracing::info!("shutdown complete");
    Ok(())
}

/// How long shutdown waits for tasks (listeners draining, streams closing) before going on.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(10);

/// Why the agent stops.
enum Stop {
    Interrupt,
    Terminate,
    /// A leave request, or the agent gave up joining.
    Requested,
}

/// Waits for SIGINT, SIGTERM or a stop request; SIGHUP reloads the config files meanwhile.
async fn wait_for_stop(stop: &CancellationToken, agent: &Arc<Agent>) -> Stop {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut terminate), Ok(mut hangup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::warn!("cannot listen for SIGTERM/SIGHUP; only SIGINT and leave stop the agent");
        return tokio::select! {
            _ = tokio::signal::ctrl_c() => Stop::Interrupt,
            _ = stop.cancelled() => Stop::Requested,
        };
    };
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {
                tracing::info!("caught SIGINT");
                return Stop::Interrupt;
            }
            _ = terminate.recv() => {
                tracing::info!("caught SIGTERM");
                return Stop::Terminate;
            }
            _ = stop.cancelled() => return Stop::Requested,
            _ = hangup.recv() => {
                tracing::info!("caught SIGHUP; reloading configuration");
                if let Err(error) = agent.reload() {
                    tracing::error!(%error, "reload failed; keeping the running configuration");
                }
            }
        }
    }
}
