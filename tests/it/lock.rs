//! `concord lock` processes against a real agent: mutual exclusion, lock-delay after the
//! holder's session dies, and `-n 2` admitting two holders at once.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{eventually, json, Agent, AgentOptions, BINARY};

fn lock_process(agent: &Agent, args: &[&str]) -> Child {
    Command::new(BINARY)
        .arg("lock")
        .args(args)
        .env("CONSUL_HTTP_ADDR", agent.address())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn concord lock")
}

fn wait_all(children: Vec<Child>) {
    for mut child in children {
        let status = child.wait().expect("wait");
        assert!(status.success(), "concord lock failed: {status}");
    }
}

/// The most `start` lines seen without their `end` at any point in the journal.
fn max_overlap(journal: &Path) -> usize {
    let text = std::fs::read_to_string(journal).unwrap();
    let mut running = 0usize;
    let mut most = 0;
    for line in text.lines() {
        match line.split_whitespace().next() {
            Some("start") => running += 1,
            Some("end") => running -= 1,
            _ => {}
        }
        most = most.max(running);
    }
    most
}

#[tokio::test]
async fn two_lock_holders_never_run_at_the_same_time() {
    let agent = Agent::start(AgentOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let script = format!(
        "echo start $$ >> {0}; sleep 0.3; echo end $$ >> {0}",
        journal.display()
    );
    let children = (0..3)
        .map(|_| lock_process(&agent, &["service/job", &script]))
        .collect();
    wait_all(children);
    let text = std::fs::read_to_string(&journal).unwrap();
    assert_eq!(text.lines().count(), 6, "{text}");
    assert_eq!(max_overlap(&journal), 1, "holders overlapped:\n{text}");
    // Everything was cleaned up: the lock is free and no session is left.
    let lock = json(
        &agent
            .client()
            .get("/v1/kv/service/job/.lock")
            .await
            .unwrap(),
    );
    assert!(lock[0].get("Session").is_none(), "{lock}");
    assert_eq!(
        json(&agent.client().get("/v1/session/list").await.unwrap()),
        serde_json::json!([])
    );
}

#[tokio::test]
async fn semaphore_admits_n_holders() {
    let agent = Agent::start(AgentOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let script = format!(
        "echo start $$ >> {0}; sleep 1; echo end $$ >> {0}",
        journal.display()
    );
    let children = (0..3)
        .map(|_| lock_process(&agent, &["-n", "2", "sem/job", &script]))
        .collect();
    wait_all(children);
    let text = std::fs::read_to_string(&journal).unwrap();
    assert_eq!(text.lines().count(), 6, "{text}");
    assert_eq!(
        max_overlap(&journal),
        2,
        "two holders should run together, never three:\n{text}"
    );
}

#[tokio::test]
async fn a_dead_holder_frees_the_lock_only_after_lock_delay() {
    let agent = Agent::start(AgentOptions::default()).await;
    let client = agent.client();
    let dir = tempfile::tempdir().unwrap();
    let first_started = dir.path().join("first");
    let second_started = dir.path().join("second");
    let mut first = lock_process(
        &agent,
        &[
            "delay/job",
            &format!("touch {}; sleep 60", first_started.display()),
        ],
    );
    eventually(
        "the first holder to start",
        Duration::from_secs(20),
        || async { first_started.exists().then_some(()) },
    )
    .await;
    let mut second = lock_process(
        &agent,
        &["delay/job", &format!("touch {}", second_started.display())],
    );

    // Kill the holder's session behind its back, as a failed node would.
    let lock = json(&client.get("/v1/kv/delay/job/.lock").await.unwrap());
    let session = lock[0]["Session"].as_str().expect("lock held").to_string();
    let destroyed = client
        .put(&format!("/v1/session/destroy/{session}"), Vec::new())
        .await
        .unwrap();
    assert_eq!(destroyed.status, 200);
    let destroyed_at = Instant::now();

    eventually(
        "the second holder to start",
        Duration::from_secs(40),
        || async { second_started.exists().then_some(()) },
    )
    .await;
    let waited = destroyed_at.elapsed();
    // The default lock-delay is 15s; the waiter must not get in before it has passed.
    assert!(
        waited >= Duration::from_secs(14),
        "acquired {waited:?} after the session died"
    );
    let status = second.wait().unwrap();
    assert!(status.success());
    // The first holder lost its lock, so its command was stopped and it exited.
    let first_status = first.wait().unwrap();
    assert!(first_status.success(), "{first_status}");
}

/// The child reads the lock command's stdin only with `-pass-stdin` (Consul's default gives it
/// none, so a child that reads stdin does not hang on a terminal).
#[tokio::test]
async fn the_child_gets_stdin_only_with_pass_stdin() {
    let agent = Agent::start(AgentOptions::default()).await;
    let (code, stdout, stderr) = crate::support::cli(
        &agent,
        &["lock", "-pass-stdin", "stdin/job", "cat"],
        Some(b"handed over\n"),
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "handed over\n");
    let (code, stdout, stderr) = crate::support::cli(
        &agent,
        &["lock", "-monitor-retry=5", "stdin/job", "cat"],
        Some(b"kept back\n"),
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "");
    let (code, _, stderr) = crate::support::cli(
        &agent,
        &["lock", "-monitor-retry=many", "stdin/job", "true"],
        None,
    );
    assert_ne!(code, 0);
    assert!(stderr.contains("-monitor-retry"), "{stderr}");
}
