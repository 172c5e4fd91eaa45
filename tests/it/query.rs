//! Prepared queries: create, list, read, update and delete with Consul's texts; execute by ID,
//! name and template over HTTP and through a real `dig`; sessions that take their queries
//! with them.

use std::process::Command;

use serde_json::{json, Value};

use crate::support::{dig_short, json, Agent, AgentOptions};

async fn register(
    agent: &Agent,
    node: &str,
    address: &str,
    rack: &str,
    tags: &[&str],
    status: &str,
) {
    let body = json!({
        "Node": node, "Address": address, "NodeMeta": {"rack": rack},
        "Service": {"ID": "web", "Service": "web", "Port": 80, "Tags": tags},
        "Check": {"CheckID": "web-alive", "Name": "alive", "Status": status, "ServiceID": "web"},
    });
    let response = agent
        .client()
        .put("/v1/catalog/register", body.to_string().into())
        .await
        .unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
}

async fn create(agent: &Agent, definition: Value) -> (u16, String) {
    let response = agent
        .client()
        .request(
            hyper::Method::POST,
            "/v1/query",
            Some(definition.to_string().into_bytes()),
        )
        .await
        .unwrap();
    let text = response.text();
    if response.status == 200 {
        (200, json(&response)["ID"].as_str().unwrap().to_string())
    } else {
        (response.status.as_u16(), text)
    }
}

/// The nodes an execution returns, sorted.
async fn executed(agent: &Agent, id_or_name: &str) -> Vec<String> {
    let response = agent
        .client()
        .get(&format!("/v1/query/{id_or_name}/execute"))
        .await
        .unwrap();
    assert_eq!(response.status, 200, "{id_or_name}: {}", response.text());
    let mut nodes: Vec<String> = json(&response)["Nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["Node"]["Node"].as_str().unwrap().to_string())
        .collect();
    nodes.sort();
    nodes
}

#[tokio::test]
async fn prepared_queries_filter_render_templates_and_answer_http_and_dns() {
    let agent = Agent::start(AgentOptions::default()).await;
    let client = agent.client();
    register(
        &agent,
        "n1",
        "10.3.0.1",
        "r1",
        &["v1", "primary"],
        "passing",
    )
    .await;
    register(&agent, "n2", "10.3.0.2", "r2", &["V2"], "warning").await;
    register(&agent, "n3", "10.3.0.3", "r1", &["v1"], "critical").await;

    // Tags exclude with `!` (case-insensitively); critical instances never answer; warning
    // ones do unless OnlyPassing; node meta narrows.
    let (status, not_v2) = create(
        &agent,
        json!({"Name": "web-not-v2", "Service": {"Service": "web", "Tags": ["!v2"]}}),
    )
    .await;
    assert_eq!(status, 200, "{not_v2}");
    assert_eq!(executed(&agent, "web-not-v2").await, ["n1"]);
    assert_eq!(executed(&agent, &not_v2).await, ["n1"], "by ID as by name");
    let (_, any) = create(
        &agent,
        json!({"Name": "web-any", "Service": {"Service": "web"}}),
    )
    .await;
    assert_eq!(executed(&agent, "web-any").await, ["n1", "n2"]);
    let (_, rack) = create(
        &agent,
        json!({"Name": "web-r2", "Service": {"Service": "web", "NodeMeta": {"rack": "r2"}}}),
    )
    .await;
    assert_eq!(executed(&agent, &rack).await, ["n2"]);
    let response = client
        .get("/v1/query/web-any/execute?limit=1")
        .await
        .unwrap();
    let body = json(&response);
    assert_eq!(body["Nodes"].as_array().unwrap().len(), 1);
    assert_eq!(body["Service"], "web");
    assert_eq!(body["Datacenter"], "dc1");
    assert_eq!(body["Failovers"], 0);
    assert_eq!(body["Nodes"][0]["Checks"][0]["CheckID"], "web-alive");

    // Read, list, update and delete.
    let read = json(&client.get(&format!("/v1/query/{any}")).await.unwrap());
    assert_eq!(read[0]["Name"], "web-any");
    assert_eq!(read[0]["Service"]["OnlyPassing"], false);
    let index = read[0]["ModifyIndex"].as_u64().unwrap();
    let update = json!({"Name": "web-any", "Service": {"Service": "web", "OnlyPassing": true}});
    let response = client
        .put(&format!("/v1/query/{any}"), update.to_string().into())
        .await
        .unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        executed(&agent, "web-any").await,
        ["n1"],
        "warning is no longer enough"
    );
    let read = json(&client.get(&format!("/v1/query/{any}")).await.unwrap());
    assert!(read[0]["ModifyIndex"].as_u64().unwrap() > index);
    let listed = json(&client.get("/v1/query").await.unwrap());
    assert_eq!(listed.as_array().unwrap().len(), 3);
    let response = client.delete(&format!("/v1/query/{rack}")).await.unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    let gone = client.get(&format!("/v1/query/{rack}")).await.unwrap();
    assert_eq!(
        (gone.status.as_u16(), gone.text()),
        (404, "Query not found".into())
    );

    // Consul's refusals: every one a 500 from its Apply, but for a missing query's 404.
    for (definition, text) in [
        (
            json!({"Name": "x"}),
            "Invalid prepared query: Must provide a Service name to query",
        ),
        (
            json!({"Service": {"Service": "web"}}),
            "Invalid prepared query: Must be bound to a session",
        ),
        (
            json!({"Name": "web-any", "Service": {"Service": "web"}}),
            "name 'web-any' aliases an existing query name",
        ),
        (
            json!({"Name": any, "Service": {"Service": "web"}}),
            "aliases an existing query ID",
        ),
        (
            json!({"Name": "bad", "Template": {"Type": "name_prefix_match", "Regexp": "("}, "Service": {"Service": "web"}}),
            "failed compiling template: Bad Regexp: ",
        ),
        (
            json!({"Name": "bad", "Template": {"Type": "name_prefix_match"}, "Service": {"Service": "${nope}"}}),
            "failed compiling template: Bad format '${nope}' in Service.Service: ",
        ),
        (
            json!({"Name": "bad", "Service": {"Service": "web"}, "DNS": {"TTL": "soon"}}),
            "Invalid prepared query: Bad DNS TTL 'soon': ",
        ),
    ] {
        let (status, body) = create(&agent, definition.clone()).await;
        assert_eq!(status, 500, "{definition}: {body}");
        assert!(body.contains(text), "{definition}: {body}");
    }
    let missing = client.get("/v1/query/nothing/execute").await.unwrap();
    assert_eq!(
        (missing.status.as_u16(), missing.text()),
        (404, "Query not found".into())
    );
    let response = client
        .put(
            "/v1/query/0000-none",
            json!({"Name": "z", "Service": {"Service": "web"}})
                .to_string()
                .into(),
        )
        .await
        .unwrap();
    assert_eq!(response.status, 500);
    assert_eq!(
        response.text(),
        "Cannot modify non-existent prepared query: '0000-none'"
    );

    // Templates: the catch-all answers any name for the service it names; a regexp template
    // takes its groups; the longest matching prefix wins.
    let (status, body) = create(
        &agent,
        json!({"Name": "", "Template": {"Type": "name_prefix_match"},
               "Service": {"Service": "${name.full}"}, "DNS": {"TTL": "7s"}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = create(
        &agent,
        json!({"Name": "geo-", "Template": {"Type": "name_prefix_match", "Regexp": "^geo-(.+?)-(.+)$"},
               "Service": {"Service": "${match(2)}", "Tags": ["${match(1)}"]}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(executed(&agent, "web").await, ["n1", "n2"]);
    assert_eq!(executed(&agent, "geo-primary-web").await, ["n1"]);
    let explained = json(&client.get("/v1/query/geo-v2-web/explain").await.unwrap());
    assert_eq!(explained["Query"]["Service"]["Service"], "web");
    assert_eq!(explained["Query"]["Service"]["Tags"], json!(["v2"]));
    assert_eq!(executed(&agent, "geo-v2-web").await, ["n2"]);
    let mut addresses = dig_short(&agent, "web.query.consul", "A");
    addresses.sort();
    assert_eq!(addresses, ["10.3.0.1", "10.3.0.2"]);
    assert_eq!(
        dig_short(&agent, "geo-primary-web.query.consul", "A"),
        ["10.3.0.1"]
    );
    let answer = Command::new("dig")
        .arg(format!("@{}", agent.host))
        .args([
            "-p",
            &agent.dns_port.to_string(),
            "+noall",
            "+answer",
            "web.query.consul",
            "A",
        ])
        .output()
        .expect("dig runs");
    let answer = String::from_utf8_lossy(&answer.stdout).to_string();
    assert!(
        answer
            .lines()
            .all(|line| line.split_whitespace().nth(1) == Some("7")),
        "the query's DNS TTL: {answer}"
    );
    // A name no query and no service answers is NXDOMAIN through the catch-all, as in Consul.
    assert!(dig_short(&agent, "nothing-here.query.consul", "A").is_empty());

    // An anonymous query lives as long as its session.
    let session = json(
        &client
            .put("/v1/session/create", b"{}".to_vec())
            .await
            .unwrap(),
    )["ID"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, bound) = create(
        &agent,
        json!({"Session": session, "Service": {"Service": "web"}}),
    )
    .await;
    assert_eq!(status, 200, "{bound}");
    assert_eq!(executed(&agent, &bound).await, ["n1", "n2"]);
    let destroyed = client
        .put(&format!("/v1/session/destroy/{session}"), Vec::new())
        .await
        .unwrap();
    assert_eq!(destroyed.status, 200);
    assert_eq!(
        client
            .get(&format!("/v1/query/{bound}"))
            .await
            .unwrap()
            .status,
        404
    );
}
