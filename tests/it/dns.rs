//! The DNS interface end to end: a real agent, services registered over HTTP, and the real
//! `dig` (bind9-dnsutils) asking over UDP and TCP; a tiny DNS server in the test stands in for
//! a recursor; malformed input arrives over real sockets.

use std::net::UdpSocket;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{eventually, Agent, AgentOptions};

/// One `dig` answer, split into its header and sections (each record's fields).
#[derive(Debug)]
struct Dig {
    status: String,
    flags: Vec<String>,
    answer: Vec<Vec<String>>,
    authority: Vec<Vec<String>>,
    additional: Vec<Vec<String>>,
    size: usize,
    raw: String,
}

impl Dig {
    fn of_type<'a>(section: &'a [Vec<String>], kind: &str) -> Vec<&'a Vec<String>> {
        section.iter().filter(|record| record[3] == kind).collect()
    }
}

fn dig(agent: &Agent, args: &[&str]) -> Dig {
    let output = Command::new("dig")
        .arg("@127.0.0.1")
        .args(["-p", &agent.dns_port.to_string()])
        .args(["+tries=1", "+time=2"])
        .args(args)
        .output()
        .expect("dig runs (install bind9-dnsutils)");
    let raw = String::from_utf8_lossy(&output.stdout).into_owned();
    let mut result = Dig {
        status: String::new(),
        flags: Vec::new(),
        answer: Vec::new(),
        authority: Vec::new(),
        additional: Vec::new(),
        size: 0,
        raw: raw.clone(),
    };
    let mut section = "";
    for line in raw.lines() {
        if let Some(rest) = line.split("status: ").nth(1) {
            result.status = rest.split(',').next().unwrap_or_default().to_string();
        }
        if let Some(rest) = line.strip_prefix(";; flags: ") {
            let flags = rest.split(';').next().unwrap_or_default();
            result.flags = flags.split_whitespace().map(str::to_string).collect();
        }
        if let Some(rest) = line.strip_prefix(";; MSG SIZE  rcvd: ") {
            result.size = rest.trim().parse().unwrap_or(0);
        }
        if line.starts_with(";; ") && line.ends_with("SECTION:") {
            section = line;
            continue;
        }
        if line.is_empty() || line.starts_with(';') {
            if line.is_empty() {
                section = "";
            }
            continue;
        }
        let fields: Vec<String> = line.split_whitespace().map(str::to_string).collect();
        match section {
            ";; ANSWER SECTION:" => result.answer.push(fields),
            ";; AUTHORITY SECTION:" => result.authority.push(fields),
            ";; ADDITIONAL SECTION:" => result.additional.push(fields),
            _ => {}
        }
    }
    result
}

/// Registers one node with one service instance and a check on it, through the catalog.
async fn register(agent: &Agent, node: &str, address: &str, service: Value, status: &str) {
    let id = service["ID"].as_str().unwrap_or_default().to_string();
    let body = json!({
        "Node": node,
        "Address": address,
        "NodeMeta": {"rack": "r1", "rfc1035-note": "plain"},
        "Service": service,
        "Check": {"CheckID": format!("check-{id}"), "Name": "probe", "Status": status, "ServiceID": id},
    });
    let response = agent
        .client()
        .put("/v1/catalog/register", body.to_string().into_bytes())
        .await
        .expect("register");
    assert!(response.status.is_success(), "{}", response.text());
}

async fn web_agent() -> Agent {
    let agent = Agent::start(AgentOptions::default()).await;
    register(
        &agent,
        "n1",
        "10.1.0.1",
        json!({"ID": "web-1", "Service": "web", "Tags": ["rails"], "Port": 8080,
               "Weights": {"Passing": 10, "Warning": 2}}),
        "passing",
    )
    .await;
    register(
        &agent,
        "n2",
        "10.1.0.2",
        json!({"ID": "web-2", "Service": "web", "Tags": ["django"], "Port": 8081,
               "Weights": {"Passing": 10, "Warning": 2}}),
        "warning",
    )
    .await;
    register(
        &agent,
        "n3",
        "10.1.0.3",
        json!({"ID": "web-3", "Service": "web", "Tags": ["rails"], "Port": 8082}),
        "critical",
    )
    .await;
    agent
}

/// SRV answers as (priority, weight, port, target), sorted.
fn srv(dig: &Dig) -> Vec<(String, String, String, String)> {
    let mut records: Vec<_> = Dig::of_type(&dig.answer, "SRV")
        .into_iter()
        .map(|r| (r[4].clone(), r[5].clone(), r[6].clone(), r[7].clone()))
        .collect();
    records.sort();
    records
}

#[tokio::test]
async fn srv_lists_healthy_instances_with_weights_targets_and_addresses() {
    let agent = web_agent().await;
    let answer = eventually("web SRV answers", Duration::from_secs(10), || async {
        let answer = dig(&agent, &["web.service.consul", "SRV"]);
        (answer.answer.len() == 2).then_some(answer)
    })
    .await;
    assert_eq!(answer.status, "NOERROR", "{}", answer.raw);
    assert!(answer.flags.contains(&"aa".to_string()), "{}", answer.raw);
    // The critical instance (n3) is absent; the warning one carries its warning weight.
    assert_eq!(
        srv(&answer),
        vec![
            (
                "1".into(),
                "10".into(),
                "8080".into(),
                "n1.node.dc1.consul.".into()
            ),
            (
                "1".into(),
                "2".into(),
                "8081".into(),
                "n2.node.dc1.consul.".into()
            ),
        ],
        "{}",
        answer.raw
    );
    let mut glue: Vec<(String, String)> = Dig::of_type(&answer.additional, "A")
        .into_iter()
        .map(|r| (r[0].clone(), r[4].clone()))
        .collect();
    glue.sort();
    assert_eq!(
        glue,
        vec![
            ("n1.node.dc1.consul.".into(), "10.1.0.1".into()),
            ("n2.node.dc1.consul.".into(), "10.1.0.2".into()),
        ],
        "{}",
        answer.raw
    );

    // A records: the healthy addresses only.
    let a = dig(&agent, &["web.service.consul", "A"]);
    let mut addresses: Vec<&str> = a.answer.iter().map(|r| r[4].as_str()).collect();
    addresses.sort();
    assert_eq!(addresses, ["10.1.0.1", "10.1.0.2"], "{}", a.raw);

    // Tag filters, plain and RFC 2782 (`_tcp` is any tag), with and without `.service`.
    let tagged = dig(&agent, &["rails.web.service.consul", "SRV"]);
    assert_eq!(srv(&tagged).len(), 1, "{}", tagged.raw);
    assert_eq!(srv(&tagged)[0].3, "n1.node.dc1.consul.");
    let rfc = dig(&agent, &["_web._rails.service.consul", "SRV"]);
    assert_eq!(srv(&rfc), srv(&tagged), "{}", rfc.raw);
    let any_tag = dig(&agent, &["_web._tcp.consul", "SRV"]);
    assert_eq!(srv(&any_tag), srv(&answer), "{}", any_tag.raw);
    let with_dc = dig(&agent, &["web.service.dc1.consul", "SRV"]);
    assert_eq!(srv(&with_dc), srv(&answer), "{}", with_dc.raw);

    // Node lookups: A, and node meta as TXT (RFC 1464, `rfc1035-` keys give the value).
    let node = dig(&agent, &["n1.node.consul", "A"]);
    assert_eq!(node.answer.len(), 1, "{}", node.raw);
    assert_eq!(node.answer[0][3], "A");
    assert_eq!(node.answer[0][4], "10.1.0.1");
    assert!(node.flags.contains(&"aa".to_string()));
    let txt = dig(&agent, &["n1.node.consul", "TXT"]);
    let mut texts: Vec<&str> = txt.answer.iter().map(|r| r[4].as_str()).collect();
    texts.sort();
    assert_eq!(texts, ["\"plain\"", "\"rack=r1\""], "{}", txt.raw);

    // <hex>.addr and the apex.
    let addr = dig(&agent, &["0a010001.addr.consul", "A"]);
    assert_eq!(addr.answer[0][4], "10.1.0.1", "{}", addr.raw);
    let soa = dig(&agent, &["consul", "SOA"]);
    assert_eq!(soa.answer[0][3], "SOA", "{}", soa.raw);
    assert_eq!(soa.answer[0][4], "ns.consul.");
    let ns = dig(&agent, &["consul", "NS"]);
    assert_eq!(ns.answer[0][4], "test-node.node.dc1.consul.", "{}", ns.raw);
}

#[tokio::test]
async fn reverse_lookups_and_missing_names() {
    let agent = web_agent().await;
    let ptr = eventually("n1's PTR", Duration::from_secs(10), || async {
        let answer = dig(&agent, &["-x", "10.1.0.1"]);
        (answer.answer.len() == 1).then_some(answer)
    })
    .await;
    assert_eq!(ptr.answer[0][0], "1.0.1.10.in-addr.arpa.");
    assert_eq!(ptr.answer[0][3], "PTR");
    assert_eq!(ptr.answer[0][4], "n1.node.dc1.consul.", "{}", ptr.raw);

    for name in [
        "missing.service.consul",
        "nobody.node.consul",
        "q1.query.consul",
        "web.service.dc9.consul",
    ] {
        let missing = dig(&agent, &[name, "A"]);
        assert_eq!(missing.status, "NXDOMAIN", "{name}: {}", missing.raw);
        assert!(missing.answer.is_empty());
        assert_eq!(missing.authority.len(), 1, "{}", missing.raw);
        assert_eq!(missing.authority[0][0], "consul.");
        assert_eq!(missing.authority[0][3], "SOA");
    }
    let unknown_address = dig(&agent, &["-x", "10.9.9.9"]);
    assert_eq!(
        unknown_address.status, "NXDOMAIN",
        "{}",
        unknown_address.raw
    );

    // An existing name without records of the asked type: NOERROR, empty, SOA.
    let no_mx = dig(&agent, &["n1.node.consul", "MX"]);
    assert_eq!(no_mx.status, "NOERROR", "{}", no_mx.raw);
    assert!(no_mx.answer.is_empty());
    assert_eq!(no_mx.authority[0][3], "SOA");

    // Outside the domain without recursors: REFUSED, recursion not available.
    let outside = dig(&agent, &["example.com", "A"]);
    assert_eq!(outside.status, "REFUSED", "{}", outside.raw);
    assert!(!outside.flags.contains(&"ra".to_string()));
}

#[tokio::test]
async fn a_thousand_instances_are_complete_over_tcp_and_trimmed_over_udp() {
    let agent = Agent::start(AgentOptions {
        extra_args: vec![
            "-hcl".into(),
            "dns_config { enable_truncate = true }".into(),
        ],
        ..AgentOptions::default()
    })
    .await;
    // Eight concurrent writers over the client's keep-alive connections.
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..8usize {
        let client = agent.client();
        writers.spawn(async move {
            for index in (writer..1000).step_by(8) {
                let body = json!({
                    "Node": format!("big-{index}"),
                    "Address": format!("10.2.{}.{}", index / 250, index % 250 + 1),
                    "Service": {"ID": format!("big-{index}"), "Service": "big", "Port": 20000 + index},
                });
                let response = client
                    .put("/v1/catalog/register", body.to_string().into_bytes())
                    .await
                    .expect("register");
                assert!(response.status.is_success(), "{}", response.text());
            }
        });
    }
    while let Some(done) = writers.join_next().await {
        done.expect("writer");
    }

    let tcp = eventually(
        "1,000 SRV answers over TCP",
        Duration::from_secs(10),
        || async {
            let answer = dig(&agent, &["+tcp", "big.service.consul", "SRV"]);
            (answer.answer.len() == 1000).then_some(answer)
        },
    )
    .await;
    assert!(
        !tcp.flags.contains(&"tc".to_string()),
        "{}",
        tcp.flags.join(" ")
    );
    assert!(tcp.size <= 65535);
    let mut ports: Vec<u32> = tcp.answer.iter().map(|r| r[6].parse().unwrap()).collect();
    ports.sort();
    assert_eq!(ports, (20000..21000).collect::<Vec<u32>>());
    for record in &tcp.answer {
        let index: usize = record[6].parse::<usize>().unwrap() - 20000;
        assert_eq!(record[7], format!("big-{index}.node.dc1.consul."));
        assert_eq!(record[4], "1");
    }
    assert_eq!(Dig::of_type(&tcp.additional, "A").len(), 1000);

    // dig retries a truncated answer over TCP unless told not to; +ignore shows the UDP
    // answer itself.
    let udp = dig(&agent, &["+noedns", "+ignore", "big.service.consul", "SRV"]);
    assert!(udp.size <= 512, "{} bytes", udp.size);
    assert!(udp.flags.contains(&"tc".to_string()), "{}", udp.raw);
    assert_eq!(udp.answer.len(), 3, "udp_answer_limit: {}", udp.raw);
    let a = dig(&agent, &["+noedns", "+ignore", "big.service.consul", "A"]);
    assert_eq!(a.answer.len(), 3, "{}", a.raw);
    assert!(a.flags.contains(&"tc".to_string()));
}

/// A tiny DNS server: answers every A question with 192.0.2.7, except names starting with
/// `silent.`, which it never answers. Runs until the test ends.
fn tiny_recursor() -> u16 {
    use hickory_proto::op::{Message, MessageType};
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{RData, Record};
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = socket.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while let Ok((length, peer)) = socket.recv_from(&mut buffer) {
            let Ok(request) = Message::from_vec(&buffer[..length]) else {
                continue;
            };
            let Some(query) = request.queries().first().cloned() else {
                continue;
            };
            if query.name().to_ascii().starts_with("silent.") {
                continue;
            }
            let mut response = Message::new();
            response
                .set_id(request.id())
                .set_message_type(MessageType::Response)
                .set_recursion_available(true)
                .add_query(query.clone())
                .add_answer(Record::from_rdata(
                    query.name().clone(),
                    60,
                    RData::A(A::new(192, 0, 2, 7)),
                ));
            let _ = socket.send_to(&response.to_vec().unwrap(), peer);
        }
    });
    port
}

#[tokio::test]
async fn names_outside_the_domain_go_to_the_recursors() {
    let recursor = tiny_recursor();
    // The first recursor has nobody listening: sequential strategy falls through to ours.
    let dead = crate::support::free_port();
    let agent = Agent::start(AgentOptions {
        extra_args: vec![
            "-recursor".into(),
            format!("127.0.0.1:{dead}"),
            "-recursor".into(),
            format!("127.0.0.1:{recursor}"),
            "-hcl".into(),
            "dns_config { recursor_timeout = \"300ms\" }".into(),
        ],
        ..AgentOptions::default()
    })
    .await;
    let answer = dig(&agent, &["www.example.test", "A"]);
    assert_eq!(answer.status, "NOERROR", "{}", answer.raw);
    assert_eq!(answer.answer[0][4], "192.0.2.7", "{}", answer.raw);
    assert!(answer.flags.contains(&"ra".to_string()), "{}", answer.raw);
    // Our own names still come from the catalog, with recursion available.
    let own = dig(&agent, &["test-node.node.consul", "A"]);
    assert_eq!(own.answer[0][4], "127.0.0.1", "{}", own.raw);
    assert!(own.flags.contains(&"ra".to_string()));
    // Every recursor failing: SERVFAIL.
    let failed = dig(&agent, &["silent.example.test", "A"]);
    assert_eq!(failed.status, "SERVFAIL", "{}", failed.raw);
}

/// Sends one datagram to the agent's DNS port and returns the reply, or None when nothing
/// comes back within `wait`.
fn udp_exchange(agent: &Agent, bytes: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(wait)).unwrap();
    socket
        .send_to(bytes, ("127.0.0.1", agent.dns_port))
        .unwrap();
    let mut buffer = [0u8; 65535];
    socket
        .recv(&mut buffer)
        .ok()
        .map(|length| buffer[..length].to_vec())
}

fn header(id: u16, questions: u16) -> Vec<u8> {
    let mut bytes = id.to_be_bytes().to_vec();
    bytes.extend_from_slice(&[0x01, 0x00]);
    bytes.extend_from_slice(&questions.to_be_bytes());
    bytes.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    bytes
}

fn valid_query(id: u16) -> Vec<u8> {
    let mut bytes = header(id, 1);
    for label in ["test-node", "node", "consul"] {
        bytes.push(label.len() as u8);
        bytes.extend_from_slice(label.as_bytes());
    }
    bytes.extend_from_slice(&[0, 0, 1, 0, 1]);
    bytes
}

fn assert_served(agent: &Agent) {
    let reply = udp_exchange(agent, &valid_query(7), Duration::from_secs(2))
        .expect("a valid query is still answered");
    assert_eq!(reply[..2], 7u16.to_be_bytes());
    assert_eq!(reply[3] & 0x0f, 0, "NOERROR");
}

#[tokio::test]
async fn malformed_input_is_dropped_or_formerr_and_others_keep_being_served() {
    use std::io::{Read, Write};
    let agent = Agent::start(AgentOptions {
        extra_args: vec![
            "-hcl".into(),
            "limits { dns_tcp_idle_timeout = \"500ms\" }".into(),
        ],
        ..AgentOptions::default()
    })
    .await;
    assert_served(&agent);

    // Zero-length and header-less datagrams: no reply (a short wait proves the silence).
    assert_eq!(udp_exchange(&agent, &[], Duration::from_millis(300)), None);
    assert_eq!(
        udp_exchange(&agent, &[1, 2, 3], Duration::from_millis(300)),
        None
    );
    let formerr = |bytes: Vec<u8>, what: &str| {
        let reply = udp_exchange(&agent, &bytes, Duration::from_secs(2))
            .unwrap_or_else(|| panic!("{what}: no reply"));
        assert_eq!(reply[..2], bytes[..2], "{what}: id echoed");
        assert_eq!(reply[3] & 0x0f, 1, "{what}: FORMERR");
    };
    let mut looping = header(1, 1);
    looping.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
    formerr(looping, "compression pointer loop");
    let mut long_label = header(2, 1);
    long_label.push(64);
    long_label.extend(std::iter::repeat_n(b'a', 64));
    long_label.extend_from_slice(&[0, 0, 1, 0, 1]);
    formerr(long_label, "label over 63 bytes");
    let mut long_name = header(3, 1);
    for _ in 0..5 {
        long_name.push(63);
        long_name.extend(std::iter::repeat_n(b'b', 63));
    }
    long_name.extend_from_slice(&[0, 0, 1, 0, 1]);
    formerr(long_name, "name over 255 bytes");
    let mut many = valid_query(4);
    many[4] = 0xff;
    many[5] = 0xff;
    formerr(many, "65,535 questions");
    assert_served(&agent);

    // A TCP client that sends half a length prefix and stalls is closed after the idle
    // timeout, while another TCP client is served meanwhile.
    let mut stalled = std::net::TcpStream::connect(("127.0.0.1", agent.dns_port)).unwrap();
    stalled.write_all(&[0x00]).unwrap();
    let query = valid_query(9);
    let mut framed = (query.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&query);
    let mut other = std::net::TcpStream::connect(("127.0.0.1", agent.dns_port)).unwrap();
    other
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    other.write_all(&framed).unwrap();
    let mut prefix = [0u8; 2];
    other.read_exact(&mut prefix).unwrap();
    let mut reply = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
    other.read_exact(&mut reply).unwrap();
    assert_eq!(reply[..2], 9u16.to_be_bytes());

    let started = Instant::now();
    stalled
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut byte = [0u8; 1];
    let read = stalled.read(&mut byte);
    assert!(
        matches!(read, Ok(0)) || read.is_err() && started.elapsed() < Duration::from_secs(5),
        "stalled connection not closed: {read:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "closed only after {:?}",
        started.elapsed()
    );

    // A zero length prefix closes the connection.
    let mut empty = std::net::TcpStream::connect(("127.0.0.1", agent.dns_port)).unwrap();
    empty
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    empty.write_all(&[0, 0]).unwrap();
    assert!(matches!(empty.read(&mut byte), Ok(0) | Err(_)));

    assert_served(&agent);
    let mut agent = agent;
    assert!(agent.child.try_wait().unwrap().is_none(), "agent died");
}
