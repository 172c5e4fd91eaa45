//! A published Consul client library driving a real agent: python-consul (PyPI, installed into
//! ./.venv by scripts/test) runs tests/compat/python_consul.py against a fresh dev agent,
//! through KV, txn, agent, health, catalog, session, event, coordinate, operator, config,
//! connect and snapshot calls, asserting on what each returns.

use std::path::PathBuf;

use crate::support::{Agent, AgentOptions};

#[tokio::test]
async fn python_consul_drives_every_api_family() {
    let agent = Agent::start(AgentOptions::default()).await;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/test, which installs python-consul there",
        python.display()
    );
    let output = tokio::process::Command::new(&python)
        .arg(root.join("tests/compat/python_consul.py"))
        .arg(agent.address())
        .arg("test-node")
        .output()
        .await
        .expect("run python");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("every step passed"),
        "python-consul against concord:\n{stdout}\n{stderr}\nagent log ends:\n{}",
        agent
            .log()
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
}
