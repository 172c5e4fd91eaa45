//! A cluster of real agent processes, one server and three clients, each on its own loopback
//! address with Consul's default ports (8300 server RPC, 8301 LAN gossip, 8500 HTTP, 8600 DNS),
//! as an operator runs one agent per machine: membership everywhere, services registered on
//! clients found through the server's HTTP API and DNS, KV and blocking queries through a
//! client, and a client killed, leaving, and forced out.

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::envoy::{backend, get, register, Envoy};
use crate::support::{
    cli, dig_short, eventually, free_port, json, Agent, AgentOptions, Placement, BINARY,
};

/// A `concord watch` process, killed when dropped.
struct Watch(std::process::Child);

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `concord watch -type event -name <name>` against `agent`, its handler appending
/// what it is given to `output`.
fn watch_events(agent: &Agent, name: &str, output: &std::path::Path) -> Watch {
    let handler = format!("cat >> '{}'", output.display());
    let child = Command::new(BINARY)
        .args(["watch", "-type", "event", "-name", name, &handler])
        .env("CONSUL_HTTP_ADDR", agent.address())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn watch");
    Watch(child)
}

/// Addresses no other test uses.
const SERVER: &str = "127.0.10.1";
const CLIENTS: [&str; 3] = ["127.0.10.2", "127.0.10.3", "127.0.10.4"];

fn placed(node: &str, ip: &str, server: bool, config: Option<String>) -> AgentOptions {
    // Coordinates reach the catalog every second instead of every 15 s.
    let mut merged = json!({"sync_coordinate_interval_min": "1s"});
    if let Some(Value::Object(extra)) = config.and_then(|text| serde_json::from_str(&text).ok()) {
        for (key, value) in extra {
            merged[key] = value;
        }
    }
    let config = Some(merged.to_string());
    AgentOptions {
        placement: Some(Placement {
            ip: ip.into(),
            node: node.into(),
            server,
            join: if server {
                Vec::new()
            } else {
                vec![SERVER.into()]
            },
            config,
            data_dir: None,
        }),
        ..AgentOptions::default()
    }
}

/// `/v1/agent/members` of `agent`: node name → serf status number.
async fn members(agent: &Agent) -> Vec<(String, u64)> {
    let Ok(response) = agent.client().get("/v1/agent/members").await else {
        return Vec::new();
    };
    let list = json(&response);
    let mut members: Vec<(String, u64)> = list
        .as_array()
        .into_iter()
        .flatten()
        .map(|member| {
            (
                member["Name"].as_str().unwrap_or_default().to_string(),
                member["Status"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    members.sort();
    members
}

async fn get_json(agent: &Agent, path: &str) -> Value {
    let response = agent.client().get(path).await.expect("request");
    json(&response)
}

async fn passing_nodes(agent: &Agent, service: &str) -> Vec<(String, String)> {
    let list = get_json(agent, &format!("/v1/health/service/{service}?passing")).await;
    list.as_array()
        .into_iter()
        .flatten()
        .map(|entry| {
            (
                entry["Node"]["Node"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                entry["Node"]["Address"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

async fn serf_health(agent: &Agent, node: &str) -> Option<String> {
    let checks = get_json(agent, &format!("/v1/health/node/{node}")).await;
    checks
        .as_array()?
        .iter()
        .find(|check| check["CheckID"] == "serfHealth")
        .and_then(|check| check["Status"].as_str())
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_server_and_three_clients_on_their_own_addresses() {
    let server = Agent::start(placed("s1", SERVER, true, None)).await;
    // c1 and c3 serve xDS (the gRPC port is off by default outside -dev, as in Consul); c3
    // also runs an event watch from its config, as Consul's `watches`.
    let scratch = tempfile::tempdir().expect("tempdir");
    let configured_output = scratch.path().join("c3-configured.events");
    let grpc = json!({"ports": {"grpc": 8502}});
    let mut c3_config = grpc.clone();
    c3_config["watches"] = json!([{
        "type": "event",
        "name": "deploy",
        "args": ["sh", "-c", format!("cat >> '{}'", configured_output.display())],
    }]);
    let mut web = grpc.clone();
    web["service"] = json!({"name": "web", "port": 8080});
    let (c1, c2, c3) = tokio::join!(
        Agent::start(placed("c1", CLIENTS[0], false, Some(web.to_string()))),
        Agent::start(placed("c2", CLIENTS[1], false, None)),
        Agent::start(placed("c3", CLIENTS[2], false, Some(c3_config.to_string()))),
    );
    let everyone = [&server, &c1, &c2, &c3];
    let all_alive: Vec<(String, u64)> = ["c1", "c2", "c3", "s1"]
        .iter()
        .map(|name| (name.to_string(), 1))
        .collect();
    for agent in everyone {
        eventually(
            "every agent to list all four alive",
            Duration::from_secs(10),
            || async { (members(agent).await == all_alive).then_some(()) },
        )
        .await;
    }
    let stats = get_json(&c3, "/v1/agent/self").await["Stats"].clone();
    assert_eq!(stats["consul"]["server"], "false", "{stats}");
    assert_eq!(stats["consul"]["known_servers"], "1", "{stats}");
    assert_eq!(stats["serf_lan"]["members"], "4", "{stats}");
    let stats = get_json(&server, "/v1/agent/self").await["Stats"].clone();
    assert_eq!(stats["consul"]["leader"], "true", "{stats}");
    assert_eq!(stats["consul"]["leader_addr"], "127.0.10.1:8300", "{stats}");
    let (code, out, err) = cli(&c3, &["members"], None);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("Node"), "{out}");
    assert!(
        lines[1].starts_with("s1") && lines[1].contains("server"),
        "servers first: {out}"
    );
    for client in ["c1", "c2", "c3"] {
        let line = lines.iter().find(|line| line.starts_with(client));
        assert!(
            line.is_some_and(|line| line.contains("alive") && line.contains("client")),
            "{out}"
        );
    }

    // A service from a client's config file, another registered over a client's HTTP API:
    // both found through the server's HTTP API and DNS, and a client's DNS.
    let response = c2
        .client()
        .put(
            "/v1/agent/service/register",
            json!({"Name": "api", "Port": 9090}).to_string().into(),
        )
        .await
        .expect("register");
    assert_eq!(response.status.as_u16(), 200, "{}", response.text());
    for (service, node, ip) in [("web", "c1", CLIENTS[0]), ("api", "c2", CLIENTS[1])] {
        let expected = vec![(node.to_string(), ip.to_string())];
        eventually(
            "the client's service in the server's catalog",
            Duration::from_secs(10),
            || async { (passing_nodes(&server, service).await == expected).then_some(()) },
        )
        .await;
        let name = format!("{service}.service.consul");
        for agent in [&server, &c3] {
            eventually("the service in DNS", Duration::from_secs(10), || async {
                (dig_short(agent, &name, "A") == [ip.to_string()]).then_some(())
            })
            .await;
        }
    }
    let srv = dig_short(&server, "api.service.consul", "SRV");
    assert!(
        srv.len() == 1 && srv[0].contains(" 9090 ") && srv[0].ends_with("c2.node.dc1.consul."),
        "{srv:?}"
    );

    // A user event fired on one client runs an event watch's handler once on every agent
    // (three `concord watch` processes, and the watch in c3's config).
    let mut outputs: Vec<std::path::PathBuf> = ["s1", "c1", "c3"]
        .iter()
        .map(|name| scratch.path().join(format!("{name}.events")))
        .collect();
    let watches: Vec<Watch> = [&server, &c1, &c3]
        .iter()
        .zip(&outputs)
        .map(|(agent, output)| watch_events(agent, "deploy", output))
        .collect();
    outputs.push(configured_output.clone());
    // Each watch has run its handler once for the (empty) list before anything is fired.
    for output in &outputs {
        eventually("the watch to start", Duration::from_secs(10), || async {
            output.exists().then_some(())
        })
        .await;
    }
    let fire = |payload: &str| {
        let (code, out, err) = cli(&c2, &["event", "-name", "deploy", payload], None);
        assert_eq!(code, 0, "{err}");
        out.trim()
            .strip_prefix("Event ID: ")
            .unwrap_or_else(|| panic!("{out}"))
            .to_string()
    };
    let first = fire("v1");
    let (code, _, err) = cli(&c2, &["event", "-name", "unrelated"], None);
    assert_eq!(code, 0, "{err}");
    let second = fire("v2");
    for output in &outputs {
        eventually(
            "both deploy events handled",
            Duration::from_secs(10),
            || async {
                let seen = std::fs::read_to_string(output).unwrap_or_default();
                seen.contains(&second).then_some(())
            },
        )
        .await;
        let seen = std::fs::read_to_string(output).unwrap_or_default();
        assert_eq!(seen.matches(&first).count(), 1, "{seen}");
        assert_eq!(seen.matches(&second).count(), 1, "{seen}");
        assert!(!seen.contains("unrelated"), "{seen}");
        assert!(seen.contains("\"djE=\""), "the payload, base64: {seen}");
    }
    let listed = get_json(&c3, "/v1/event/list?name=deploy").await;
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");
    assert!(
        listed[1]["LTime"].as_u64() > listed[0]["LTime"].as_u64(),
        "{listed}"
    );
    let too_big = c1
        .client()
        .put("/v1/event/fire/deploy", vec![b'x'; 301])
        .await
        .expect("fire");
    assert_eq!(too_big.status.as_u16(), 413);
    drop(watches);

    // KV through clients: a blocking query on one returns the write made on another.
    let missing = c3.client().get("/v1/kv/cfg/flag").await.expect("get");
    assert_eq!(missing.status.as_u16(), 404);
    let index = missing.index();
    assert!(index > 0);
    let blocking_client = c3.client();
    let blocked = tokio::spawn(async move {
        blocking_client
            .get(&format!("/v1/kv/cfg/flag?index={index}&wait=30s"))
            .await
            .expect("blocking get")
    });
    let put = c1
        .client()
        .put("/v1/kv/cfg/flag", b"on".to_vec())
        .await
        .expect("put");
    assert_eq!(put.text(), "true");
    let woke = blocked.await.expect("blocking task");
    assert_eq!(woke.status.as_u16(), 200);
    assert!(woke.index() > index);
    assert_eq!(json(&woke)[0]["Value"], "b24=", "base64 of \"on\"");
    let consistent = c2
        .client()
        .get("/v1/kv/cfg/flag?consistent&raw")
        .await
        .expect("consistent get");
    assert_eq!(consistent.text(), "on");

    // The mesh across two clients: each sidecar's leaf certificate is signed by the server
    // through its client, its xDS comes from the client's replica, and traffic flows over
    // mTLS between the clients' Envoys; an intention written through a client stops it.
    let pay_port = backend("pay says hi").await;
    let (pay_sidecar, shop_sidecar, upstream) = (free_port(), free_port(), free_port());
    register(&c3, "pay", "pay", pay_port, pay_sidecar, &[], json!({})).await;
    let shop_port = free_port();
    register(
        &c1,
        "shop",
        "shop",
        shop_port,
        shop_sidecar,
        &[("pay", upstream)],
        json!({}),
    )
    .await;
    let pay_envoy = Envoy::start(&c3, "pay").await;
    let shop_envoy = Envoy::start(&c1, "shop").await;
    eventually(
        "shop reaches pay through both Envoys",
        Duration::from_secs(20),
        || async { (get(upstream).await == Ok((200, "pay says hi".into()))).then_some(()) },
    )
    .await;
    let (code, _, err) = cli(&c1, &["intention", "create", "-deny", "shop", "pay"], None);
    assert_eq!(code, 0, "{err}");
    // A refusal, then RBAC's own (the first refusals may be the old filter chain closing).
    eventually(
        "the deny to reach pay's Envoy",
        Duration::from_secs(10),
        || async {
            (get(upstream).await.is_err() && pay_envoy.stat("connect_authz.rbac.denied").await >= 1)
                .then_some(())
        },
    )
    .await;
    assert!(shop_envoy.rejections().await.is_empty());
    drop((pay_envoy, shop_envoy));

    // Network coordinates: every agent measured round trips and sent its coordinate; `rtt`
    // estimates from them, and `?near=` sorts by them.
    eventually(
        "four coordinates in the catalog",
        Duration::from_secs(20),
        || async {
            let listed = get_json(&server, "/v1/coordinate/nodes").await;
            let nodes: Vec<&str> = listed
                .as_array()?
                .iter()
                .filter(|entry| entry["Coord"]["Vec"].as_array().map(Vec::len) == Some(8))
                .filter_map(|entry| entry["Node"].as_str())
                .collect();
            (nodes == ["c1", "c2", "c3", "s1"]).then_some(())
        },
    )
    .await;
    let (code, out, err) = cli(&c1, &["rtt", "c3"], None);
    assert_eq!(code, 0, "{err}");
    let estimate: f64 = out
        .trim()
        .strip_prefix("Estimated c3 <-> c1 rtt: ")
        .and_then(|rest| rest.strip_suffix(" ms (using LAN coordinates)"))
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!((0.0..1000.0).contains(&estimate), "{out}");
    let own = get_json(&c1, "/v1/agent/self").await;
    assert_eq!(
        own["Coord"]["Vec"].as_array().map(Vec::len),
        Some(8),
        "{own}"
    );
    for (name, x) in [("near-host", 0.001), ("far-host", 0.5)] {
        let register = json!({"Node": name, "Address": "10.9.9.9"});
        let response = c1
            .client()
            .put("/v1/catalog/register", register.to_string().into())
            .await
            .expect("register");
        assert_eq!(response.status.as_u16(), 200, "{}", response.text());
        let mut vec = vec![0.0; 8];
        vec[0] = x;
        let update = json!({"Node": name, "Coord": {"Vec": vec, "Error": 0.1, "Adjustment": 0.0, "Height": 0.00001}});
        let response = c1
            .client()
            .put("/v1/coordinate/update", update.to_string().into())
            .await
            .expect("update");
        assert_eq!(response.status.as_u16(), 200, "{}", response.text());
    }
    eventually(
        "?near= to sort by estimated round trip",
        Duration::from_secs(10),
        || async {
            let nodes = get_json(&c3, "/v1/catalog/nodes?near=near-host").await;
            let order: Vec<&str> = nodes
                .as_array()?
                .iter()
                .filter_map(|n| n["Node"].as_str())
                .collect();
            (order.first() == Some(&"near-host") && order.last() == Some(&"far-host")).then_some(())
        },
    )
    .await;
    let bad = c1
        .client()
        .put("/v1/coordinate/update", json!({"Node": "c1", "Coord": {"Vec": [1.0], "Error": 0.1, "Adjustment": 0.0, "Height": 0.0}}).to_string().into())
        .await
        .expect("bad update");
    assert_eq!(bad.status.as_u16(), 400);

    // kill -9 a client: every survivor says failed, serfHealth goes critical and its service
    // leaves passing results, within 10 s under LAN timings.
    c2.signal("KILL");
    let survivors = [&server, &c1, &c3];
    for agent in survivors {
        eventually(
            "survivors to mark c2 failed",
            Duration::from_secs(10),
            || async {
                members(agent)
                    .await
                    .contains(&("c2".to_string(), 4))
                    .then_some(())
            },
        )
        .await;
    }
    eventually(
        "c2's serfHealth critical, api out of ?passing",
        Duration::from_secs(10),
        || async {
            let critical = serf_health(&server, "c2").await.as_deref() == Some("critical");
            (critical && passing_nodes(&server, "api").await.is_empty()).then_some(())
        },
    )
    .await;
    assert!(dig_short(&server, "api.service.consul", "A").is_empty());

    // leave: the client is listed left and deregistered with its services.
    let (code, out, err) = cli(&c3, &["leave"], None);
    assert_eq!((code, out.trim()), (0, "Graceful leave complete"), "{err}");
    let mut c3 = c3;
    assert_eq!(c3.wait_exit(Duration::from_secs(10)).await, Some(0));
    for agent in [&server, &c1] {
        eventually("c3 listed left", Duration::from_secs(10), || async {
            members(agent)
                .await
                .contains(&("c3".to_string(), 3))
                .then_some(())
        })
        .await;
    }
    eventually("c3 deregistered", Duration::from_secs(10), || async {
        let node = get_json(&server, "/v1/catalog/node/c3").await;
        node.is_null().then_some(())
    })
    .await;

    // force-leave -prune: the failed client is erased from the member lists and the catalog.
    let (code, _, err) = cli(&c1, &["force-leave", "no-such-node"], None);
    assert_eq!(code, 1);
    assert!(
        err.contains("No node found with name 'no-such-node'"),
        "{err}"
    );
    let (code, _, err) = cli(&c1, &["force-leave", "-prune", "c2"], None);
    assert_eq!(code, 0, "{err}");
    for agent in [&server, &c1] {
        eventually("c2 erased", Duration::from_secs(10), || async {
            (!members(agent).await.iter().any(|(name, _)| name == "c2")).then_some(())
        })
        .await;
    }
    eventually("c2 deregistered", Duration::from_secs(10), || async {
        get_json(&server, "/v1/catalog/node/c2")
            .await
            .is_null()
            .then_some(())
    })
    .await;
    assert!(get_json(&server, "/v1/catalog/node/c1").await["Node"]["Node"] == "c1");
}

/// memberlist's local timings (`-dev` uses them; here set through `gossip_lan`).
fn local_timings() -> String {
    json!({"gossip_lan": {
        "probe_interval": "1s",
        "probe_timeout": "200ms",
        "suspicion_mult": 3,
        "gossip_interval": "100ms",
        "retransmit_mult": 2
    }})
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_stopped_for_three_seconds_gets_no_other_member_declared_failed() {
    const IPS: [&str; 4] = ["127.0.11.1", "127.0.11.2", "127.0.11.3", "127.0.11.4"];
    let placed_here = |node: &str, ip: &str, server: bool| AgentOptions {
        placement: Some(Placement {
            ip: ip.into(),
            node: node.into(),
            server,
            join: if server {
                Vec::new()
            } else {
                vec![IPS[0].into()]
            },
            config: Some(local_timings()),
            data_dir: None,
        }),
        ..AgentOptions::default()
    };
    let server = Agent::start(placed_here("s1", IPS[0], true)).await;
    let (c1, c2, c3) = tokio::join!(
        Agent::start(placed_here("c1", IPS[1], false)),
        Agent::start(placed_here("c2", IPS[2], false)),
        Agent::start(placed_here("c3", IPS[3], false)),
    );
    let everyone = [&server, &c1, &c2, &c3];
    let others = ["c2", "c3", "s1"];
    for agent in everyone {
        eventually("all four alive", Duration::from_secs(10), || async {
            (members(agent).await.iter().all(|(_, status)| *status == 1)
                && members(agent).await.len() == 4)
                .then_some(())
        })
        .await;
    }

    // The stop is the fault itself (a starved or paused process), so it lasts a fixed time.
    c1.signal("STOP");
    let stopped_until = std::time::Instant::now() + Duration::from_secs(3);
    let watchers = [&server, &c2, &c3];
    let mut looks = 0;
    while std::time::Instant::now() < stopped_until {
        for agent in watchers {
            for (name, status) in members(agent).await {
                assert!(
                    !(others.contains(&name.as_str()) && status != 1),
                    "{name} declared {status} while c1 was stopped"
                );
            }
        }
        looks += 1;
    }
    c1.signal("CONT");
    // Once c1 is back, it must come back alive everywhere, and while it catches up on its
    // timers and queued packets, nobody may see any other member as anything but alive.
    let mut c1_back = false;
    let settle = std::time::Instant::now() + Duration::from_secs(15);
    while !c1_back || std::time::Instant::now() < settle {
        c1_back = true;
        for agent in everyone {
            let listed = members(agent).await;
            for (name, status) in &listed {
                assert!(
                    !(others.contains(&name.as_str()) && *status != 1),
                    "{name} declared {status} after c1 resumed (seen by an agent)"
                );
                if name == "c1" && *status != 1 {
                    c1_back = false;
                }
            }
        }
        looks += 1;
        assert!(
            std::time::Instant::now() < settle + Duration::from_secs(15),
            "c1 did not come back alive"
        );
    }
    assert!(looks > 10, "the members lists were looked at throughout");

    // An agent that takes a live member's name (with its own node id) joins the pool but
    // not the catalog, and changes nobody else's membership.
    let impostor = Agent::start(placed_here("c2", "127.0.11.5", false)).await;
    eventually(
        "the leader to refuse the impostor",
        Duration::from_secs(10),
        || async {
            server
                .log()
                .contains("Node name c2 is reserved")
                .then_some(())
        },
    )
    .await;
    let node = get_json(&server, "/v1/catalog/node/c2").await;
    assert_eq!(node["Node"]["Address"], IPS[2], "{node}");
    for agent in [&server, &c1, &c3] {
        let listed = members(agent).await;
        for name in ["c1", "c2", "c3", "s1"] {
            assert!(listed.contains(&(name.to_string(), 1)), "{listed:?}");
        }
    }
    assert_eq!(serf_health(&server, "c2").await.as_deref(), Some("passing"));
    drop(impostor);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_encryption_refuses_strangers_and_rotates_keys_without_flapping() {
    const IPS: [&str; 3] = ["127.0.12.1", "127.0.12.2", "127.0.12.3"];
    let keygen = || {
        let output = Command::new(BINARY).arg("keygen").output().expect("keygen");
        assert!(output.status.success());
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    };
    let (first, second) = (keygen(), keygen());
    assert_ne!(first, second);
    let with = |node: &str, ip: &str, server: bool, config: Value| AgentOptions {
        placement: Some(Placement {
            ip: ip.into(),
            node: node.into(),
            server,
            join: if server {
                Vec::new()
            } else {
                vec![IPS[0].into()]
            },
            config: Some(config.to_string()),
            data_dir: None,
        }),
        ..AgentOptions::default()
    };
    let keyed = json!({ "encrypt": first });
    let server = Agent::start(with("s1", IPS[0], true, keyed.clone())).await;
    let client = Agent::start(with("c1", IPS[1], false, keyed)).await;
    for agent in [&server, &client] {
        eventually(
            "both encrypted members alive",
            Duration::from_secs(10),
            || async {
                (members(agent).await == [("c1".to_string(), 1), ("s1".to_string(), 1)])
                    .then_some(())
            },
        )
        .await;
    }

    // An agent without the key cannot join, and says why.
    let mut stranger = Agent::spawn(AgentOptions {
        placement: Some(Placement {
            ip: IPS[2].into(),
            node: "stranger".into(),
            server: false,
            join: Vec::new(),
            config: Some(json!({"start_join": [IPS[0]]}).to_string()),
            data_dir: None,
        }),
        ..AgentOptions::default()
    });
    assert_ne!(stranger.wait_exit(Duration::from_secs(20)).await, Some(0));
    let log = stranger.log();
    assert!(
        log.contains("start_join failed") && log.contains("encrypt"),
        "{log}"
    );
    drop(stranger);
    let metrics = get_json(&server, "/v1/agent/metrics").await;
    let dropped = metrics["Counters"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|counter| counter["Name"] == "consul.gossip.dropped_messages")
        .and_then(|counter| counter["Count"].as_u64());
    assert!(dropped.is_some_and(|count| count > 0), "{metrics}");
    assert!(
        server.log().contains("gossip message dropped"),
        "the peer is logged"
    );

    // Rotation through the CLI on the client: install, use, remove; nobody flaps.
    let watch_flapping = || async {
        for agent in [&server, &client] {
            let listed = members(agent).await;
            assert!(
                listed.iter().all(|(_, status)| *status == 1),
                "a member flapped: {listed:?}"
            );
        }
    };
    let keyring = |args: &[&str]| {
        let mut all = vec!["keyring"];
        all.extend_from_slice(args);
        cli(&client, &all, None)
    };
    let (code, out, err) = keyring(&["-install", &second]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("Installing new gossip encryption key"),
        "{out}"
    );
    watch_flapping().await;
    let (code, out, _) = keyring(&["-list"]);
    assert_eq!(code, 0);
    assert!(out.contains(&format!("{first} [2/2]")), "{out}");
    assert!(out.contains(&format!("{second} [2/2]")), "{out}");
    let (code, _, err) = keyring(&["-remove", &first]);
    assert_eq!(code, 1, "the primary cannot be removed");
    assert!(
        err.contains("Removing the primary key is not allowed"),
        "{err}"
    );
    let (code, _, err) = keyring(&["-use", &second]);
    assert_eq!(code, 0, "{err}");
    watch_flapping().await;
    let (code, _, err) = keyring(&["-remove", &first]);
    assert_eq!(code, 0, "{err}");
    watch_flapping().await;
    let (_, out, _) = keyring(&["-list"]);
    assert!(out.contains(&format!("{second} [2/2]")), "{out}");
    assert!(!out.contains(&first), "{out}");
    // Gossip keeps flowing on the new key: a KV write through the client still works, and
    // both members stay alive for another round of probes.
    let put = client
        .client()
        .put("/v1/kv/rotated", b"yes".to_vec())
        .await
        .expect("put");
    assert_eq!(put.text(), "true");
    let stats = get_json(&client, "/v1/agent/self").await["Stats"].clone();
    assert_eq!(stats["serf_lan"]["encrypted"], "true", "{stats}");
    watch_flapping().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_of_three_datacenters_meet_in_the_wan_pool_by_join_and_retry_join_wan() {
    let server = |node: &str, ip: &str, datacenter: &str| AgentOptions {
        placement: Some(Placement {
            ip: ip.into(),
            node: node.into(),
            server: true,
            join: Vec::new(),
            config: Some(json!({ "datacenter": datacenter }).to_string()),
            data_dir: None,
        }),
        ..AgentOptions::default()
    };
    // A third datacenter's server finds the WAN pool by itself (`retry_join_wan`).
    let north = AgentOptions {
        placement: Some(Placement {
            config: Some(
                json!({"datacenter": "north", "retry_join_wan": ["127.0.13.1"],
                       "retry_interval_wan": "1s"})
                .to_string(),
            ),
            ..server("s3", "127.0.13.3", "north")
                .placement
                .expect("placement")
        }),
        ..AgentOptions::default()
    };
    let (east, west, north) = tokio::join!(
        Agent::start(server("s1", "127.0.13.1", "east")),
        Agent::start(server("s2", "127.0.13.2", "west")),
        Agent::start(north),
    );
    let (code, out, err) = cli(&west, &["join", "-wan", "127.0.13.1"], None);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        "Successfully joined cluster by contacting 1 nodes."
    );
    let wan_members = |agent: &Agent| {
        let agent_address = agent.address();
        async move {
            let client = concord::api::client::Client::from_flags(Some(&agent_address), None)
                .expect("client");
            let listed = client.get("/v1/agent/members?wan").await.ok()?;
            let list: Value = serde_json::from_slice(&listed.body).ok()?;
            let mut names: Vec<(String, u64, String)> = list
                .as_array()?
                .iter()
                .map(|m| {
                    (
                        m["Name"].as_str().unwrap_or_default().to_string(),
                        m["Status"].as_u64().unwrap_or_default(),
                        m["Tags"]["dc"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect();
            names.sort();
            Some(names)
        }
    };
    let expected = vec![
        ("s1.east".to_string(), 1, "east".to_string()),
        ("s2.west".to_string(), 1, "west".to_string()),
        ("s3.north".to_string(), 1, "north".to_string()),
    ];
    for agent in [&east, &west, &north] {
        eventually(
            "all three servers in the WAN pool",
            Duration::from_secs(10),
            || async { (wan_members(agent).await? == expected).then_some(()) },
        )
        .await;
        // Each LAN pool still holds its own datacenter only.
        assert_eq!(members(agent).await.len(), 1);
    }
    let (code, out, _) = cli(&east, &["members", "-wan"], None);
    assert_eq!(code, 0);
    assert!(out.contains("s2.west") && out.contains("west"), "{out}");

    // A server of a cluster with a gossip key is refused, and the WAN pool stays as it was.
    let keyed = AgentOptions {
        placement: Some(Placement {
            config: Some(
                json!({"datacenter": "south", "encrypt": "pUqJrVyVRj5jsiYEkM/tFQYfWyJIv4s3XkvDwy7Cu5s="})
                    .to_string(),
            ),
            ..server("s4", "127.0.13.4", "south")
                .placement
                .expect("placement")
        }),
        ..AgentOptions::default()
    };
    let south = Agent::start(keyed).await;
    let (code, out, err) = cli(&south, &["join", "-wan", "127.0.13.1"], None);
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("encrypt"), "{err}");
    assert_eq!(wan_members(&east).await, Some(expected));
}
