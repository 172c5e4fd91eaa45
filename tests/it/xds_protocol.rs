//! The xDS server against a scripted delta-ADS client, for what a real Envoy never sends:
//! streams without a node, empty or unknown type URLs, bytes that are not a request,
//! rejections, and thousands of streams
//! opened and dropped. Each misbehaving stream gets a gRPC error or is ignored, and the
//! stream next to it keeps being served.

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use futures::StreamExt;
use serde_json::json;
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::envoy::register;
use crate::support::{eventually, free_port, gauge_name, json, Agent, AgentOptions};

const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";

/// One delta stream: requests go in through `requests`, responses come out of `responses`.
struct Stream {
    requests: mpsc::Sender<DeltaDiscoveryRequest>,
    responses: tonic::Streaming<DeltaDiscoveryResponse>,
}

async fn connect(agent: &Agent) -> Channel {
    Channel::from_shared(format!("http://127.0.0.1:{}", agent.grpc_port))
        .unwrap()
        .connect()
        .await
        .expect("connect to the gRPC port")
}

async fn open(channel: &Channel, first: DeltaDiscoveryRequest) -> Result<Stream, tonic::Status> {
    let (requests, receiver) = mpsc::channel(16);
    requests.send(first).await.unwrap();
    let outbound = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|request| (request, receiver))
    });
    let mut client = AggregatedDiscoveryServiceClient::new(channel.clone());
    let responses = client
        .delta_aggregated_resources(outbound)
        .await?
        .into_inner();
    Ok(Stream {
        requests,
        responses,
    })
}

/// Sends `bytes` as one gRPC message on a new delta stream; returns how the stream ended.
async fn send_raw(channel: &Channel, bytes: Vec<u8>) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.expect("channel ready");
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources",
    );
    // Keep the request side open, as Envoy does, so the end is the server's doing.
    let outbound = futures::stream::iter([bytes]).chain(futures::stream::pending());
    let mut stream = match grpc
        .streaming(tonic::Request::new(outbound), path, RawCodec)
        .await
    {
        Ok(response) => response.into_inner(),
        Err(status) => return status,
    };
    match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
        Ok(Err(status)) => status,
        Ok(Ok(other)) => panic!("expected an error status, got {other:?}"),
        Err(_) => panic!("no answer to a malformed request within 10s"),
    }
}

/// Raw bytes out, delta responses in.
struct RawCodec;

struct RawEncoder;

struct ResponseDecoder;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = DeltaDiscoveryResponse;
    type Encoder = RawEncoder;
    type Decoder = ResponseDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> ResponseDecoder {
        ResponseDecoder
    }
}

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        prost::bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for ResponseDecoder {
    type Item = DeltaDiscoveryResponse;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<DeltaDiscoveryResponse>, tonic::Status> {
        prost::Message::decode(src)
            .map(Some)
            .map_err(|error| tonic::Status::internal(error.to_string()))
    }
}

fn request(node: &str, type_url: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        node: (!node.is_empty()).then(|| Node {
            id: node.into(),
            ..Default::default()
        }),
        type_url: type_url.into(),
        ..Default::default()
    }
}

async fn next(stream: &mut Stream) -> Result<DeltaDiscoveryResponse, tonic::Status> {
    match tokio::time::timeout(Duration::from_secs(10), stream.responses.message()).await {
        Ok(Ok(Some(response))) => Ok(response),
        Ok(Ok(None)) => Err(tonic::Status::cancelled("stream ended")),
        Ok(Err(status)) => Err(status),
        Err(_) => panic!("no response within 10s"),
    }
}

async fn metric(agent: &Agent, name: &str, proxy: &str) -> u64 {
    let metrics = json(&agent.client().get("/v1/agent/metrics").await.unwrap());
    ["Counters", "Gauges"]
        .iter()
        .flat_map(|kind| metrics[kind].as_array().cloned().unwrap_or_default())
        .find(|m| m["Name"] == name && m["Labels"]["proxy"] == proxy)
        .map(|m| {
            m["Count"]
                .as_u64()
                .or(m["Value"].as_f64().map(|v| v as u64))
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_streams_get_errors_and_do_not_disturb_others() {
    let agent = Agent::start(AgentOptions::default()).await;
    register(
        &agent,
        "web",
        "web",
        free_port(),
        free_port(),
        &[],
        json!({}),
    )
    .await;
    let channel = connect(&agent).await;

    // A good stream, held open throughout.
    let mut good = open(&channel, request("web-sidecar-proxy", CLUSTER))
        .await
        .unwrap();
    let clusters = next(&mut good).await.unwrap();
    assert_eq!(clusters.type_url, CLUSTER);
    assert!(clusters.resources.iter().any(|r| r.name == "local_app"));

    // No node id, and an empty type URL: InvalidArgument, stream over.
    let mut nameless = open(&channel, request("", CLUSTER)).await.unwrap();
    let status = next(&mut nameless).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
    let mut typeless = open(&channel, request("web-sidecar-proxy", ""))
        .await
        .unwrap();
    let status = next(&mut typeless).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");

    // Bytes that are not a DiscoveryRequest (a field claiming 5 bytes, carrying 1).
    let status = send_raw(&channel, vec![0x0a, 0x05, 0x01]).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
    assert!(status.message().contains("malformed request"), "{status}");

    // An unknown type URL is ignored; the same stream then gets clusters.
    let mut odd = open(
        &channel,
        request("web-sidecar-proxy", "type.googleapis.com/no.such.Type"),
    )
    .await
    .unwrap();
    odd.requests.send(request("", CLUSTER)).await.unwrap();
    assert_eq!(next(&mut odd).await.unwrap().type_url, CLUSTER);

    // A rejection is counted for the proxy; the stream stays up and gets the next change.
    let mut nack = request("", CLUSTER);
    nack.response_nonce = clusters.nonce.clone();
    nack.error_detail = Some(RpcStatus {
        code: 13,
        message: "test rejection".into(),
        details: Vec::new(),
    });
    good.requests.send(nack).await.unwrap();
    eventually(
        "the rejection in the proxy's metrics",
        Duration::from_secs(10),
        || async {
            (metric(&agent, "consul.xds.rejected", "web-sidecar-proxy").await == 1).then_some(())
        },
    )
    .await;
    register(
        &agent,
        "web",
        "web",
        free_port(),
        free_port(),
        &[("api", free_port())],
        json!({}),
    )
    .await;
    let update = next(&mut good).await.unwrap();
    assert!(update
        .resources
        .iter()
        .any(|r| r.name.starts_with("api.default.dc1.internal.")));

    // 10,000 streams opened and dropped at once, over connections of their own (50 streams
    // each): the HTTP/2 layer may cut such a connection off (rapid-reset protection), which
    // is an error for that client only.
    let mut refused = 0;
    for _ in 0..200 {
        let abuser = connect(&agent).await;
        let batch: Vec<_> = (0..50)
            .map(|_| open(&abuser, request("web-sidecar-proxy", CLUSTER)))
            .collect();
        for stream in futures::future::join_all(batch).await {
            refused += usize::from(stream.is_err());
        }
    }
    assert!(refused < 10_000, "every one of 10,000 streams was refused");
    eventually(
        "dropped streams to be closed",
        Duration::from_secs(30),
        || async {
            (metric(&agent, &gauge_name("xds.streams"), "web-sidecar-proxy").await == 2)
                .then_some(())
        },
    )
    .await;
    // The good stream still works: ACK, then a change arrives.
    let mut ack = request("", CLUSTER);
    ack.response_nonce = update.nonce.clone();
    good.requests.send(ack).await.unwrap();
    register(
        &agent,
        "web",
        "web",
        free_port(),
        free_port(),
        &[("db", free_port())],
        json!({}),
    )
    .await;
    let update = next(&mut good).await.unwrap();
    assert!(update
        .resources
        .iter()
        .any(|r| r.name.starts_with("db.default.dc1.internal.")));
    drop(odd);
}

/// The agent's tasks by name, from `/v1/agent/metrics` (`consul.<host>.tasks{name}`).
async fn task_counts(agent: &Agent) -> std::collections::BTreeMap<String, u64> {
    let metrics = json(&agent.client().get("/v1/agent/metrics").await.unwrap());
    metrics["Gauges"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|g| g["Name"] == gauge_name("tasks").as_str())
        .map(|g| {
            let name = g["Labels"]["name"].as_str().unwrap_or_default().to_string();
            (name, g["Value"].as_f64().unwrap_or_default() as u64)
        })
        .collect()
}

/// 10,000 xDS streams naming proxies nobody registered, and 10,000 leaf-certificate requests
/// for names nobody registered, leave no task (and no kept certificate) behind once they are
/// done: a proxy's snapshot task lives while a stream holds it, a leaf's while someone holds
/// it or a registered service needs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_proxy_ids_and_leaf_names_leave_nothing_behind() {
    let agent = Agent::start(AgentOptions {
        extra_args: vec![
            "-hcl".into(),
            r#"connect { ca_config = { csr_max_per_second = 0 } }
               limits { connect_leaf_idle_timeout = "200ms" }"#
                .into(),
        ],
        ..AgentOptions::default()
    })
    .await;
    crate::connect_entries::ca_ready(&agent).await;
    // A registered sidecar with an Envoy-like stream: its tasks must stay.
    register(
        &agent,
        "web",
        "web",
        free_port(),
        free_port(),
        &[],
        json!({}),
    )
    .await;
    let channel = connect(&agent).await;
    let mut good = open(&channel, request("web-sidecar-proxy", CLUSTER))
        .await
        .unwrap();
    next(&mut good).await.unwrap();
    let baseline = eventually("a settled task count", Duration::from_secs(10), || async {
        let counts = task_counts(&agent).await;
        (counts.get("proxycfg.watcher") == Some(&1) && counts.get("agent.leaf") == Some(&1))
            .then_some(counts)
    })
    .await;

    // 10,000 junk proxy ids, 1,000 streams at a time held until their snapshot tasks exist.
    for batch in 0..10 {
        let connection = connect(&agent).await;
        let streams: Vec<Stream> = futures::future::join_all(
            (0..1000).map(|i| open(&connection, request(&format!("junk-{batch}-{i}"), CLUSTER))),
        )
        .await
        .into_iter()
        .map(|stream| stream.expect("stream opens"))
        .collect();
        eventually(
            "a snapshot task per junk stream",
            Duration::from_secs(30),
            || async {
                let watchers = task_counts(&agent).await.get("proxycfg.watcher").copied();
                (watchers >= Some(1001)).then_some(())
            },
        )
        .await;
        drop(streams);
    }

    // 10,000 junk leaf names, 32 requests at a time; each is signed and served.
    let client = agent.client();
    let names: Vec<String> = (0..10_000).map(|i| format!("junk-leaf-{i}")).collect();
    for chunk in names.chunks(32) {
        let paths: Vec<String> = chunk
            .iter()
            .map(|name| format!("/v1/agent/connect/ca/leaf/{name}"))
            .collect();
        let responses = futures::future::join_all(paths.iter().map(|path| client.get(path))).await;
        for response in responses {
            let response = response.expect("leaf request");
            assert_eq!(response.status, 200, "{}", response.text());
        }
    }

    eventually(
        "the task counts back at the baseline",
        Duration::from_secs(60),
        || async {
            let counts = task_counts(&agent).await;
            (counts == baseline).then_some(())
        },
    )
    .await;
    // Nothing junk was kept for restarts; the registered service's certificate was.
    let log = agent.log();
    let started = log
        .lines()
        .find(|line| line.contains("agent started"))
        .expect("the start line");
    let data_dir = started
        .split("data_dir=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("data_dir in the start line");
    let kept: Vec<String> = std::fs::read_dir(std::path::Path::new(data_dir).join("connect/leaf"))
        .map(|dir| {
            dir.filter_map(|entry| entry.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(kept, ["web.json"], "certificates kept on disk");
    drop(good);
}

/// A state-of-the-world client that asks and asks but never reads: its stream task blocks
/// sending to it, and must not hold the agent's shutdown past its limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_never_reads_does_not_hold_shutdown() {
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
    let mut agent = Agent::start(AgentOptions::default()).await;
    crate::connect_entries::ca_ready(&agent).await;
    let upstreams: Vec<(String, u16)> = (0..5)
        .map(|i| (format!("upstream-{i}"), free_port()))
        .collect();
    let upstreams: Vec<(&str, u16)> = upstreams.iter().map(|(n, p)| (n.as_str(), *p)).collect();
    register(
        &agent,
        "web",
        "web",
        free_port(),
        free_port(),
        &upstreams,
        json!({}),
    )
    .await;
    let channel = connect(&agent).await;
    // A well-behaved stream first, so the proxy's snapshot is ready (certificate issued).
    let mut ready = open(&channel, request("web-sidecar-proxy", CLUSTER))
        .await
        .unwrap();
    next(&mut ready).await.unwrap();
    // Every request names different clusters, so each is answered with every cluster (about
    // 2 KB for the five) whether or not the last answer was read: enough requests to fill the
    // HTTP/2 windows and the socket buffers.
    let requests = futures::stream::iter((0..4000).map(|i| DiscoveryRequest {
        node: Some(Node {
            id: "web-sidecar-proxy".into(),
            ..Default::default()
        }),
        type_url: CLUSTER.into(),
        resource_names: vec![format!("name-{i}")],
        ..Default::default()
    }))
    .chain(futures::stream::pending());
    let mut client = AggregatedDiscoveryServiceClient::new(channel.clone());
    let unread = client
        .stream_aggregated_resources(requests)
        .await
        .expect("stream opens");
    // The stream task is stuck sending: it no longer answers the agent's reports, while the
    // proxy still counts its stream (the well-behaved one answers).
    eventually(
        "the stream task blocked on send",
        Duration::from_secs(30),
        || async {
            let streams = metric(&agent, &gauge_name("xds.streams"), "web-sidecar-proxy").await;
            let status = json(
                &agent
                    .client()
                    .get("/v1/agent/xds?proxy=web-sidecar-proxy")
                    .await
                    .unwrap(),
            );
            let answered = status["Streams"].as_array().map_or(0, Vec::len);
            (streams == 2 && answered == 1).then_some(())
        },
    )
    .await;
    agent.signal("TERM");
    assert_eq!(
        agent.wait_exit(Duration::from_secs(12)).await,
        Some(0),
        "{}",
        agent.log()
    );
    let log = agent.log();
    assert!(log.contains("shutdown complete"), "{log}");
    assert!(!log.contains("did not stop"), "{log}");
    drop((unread, ready));
}
