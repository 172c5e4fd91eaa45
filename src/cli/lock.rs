//! `concord lock [-n N] prefix command...`: runs a command while holding a distributed lock
//! (or one of N semaphore slots), with Consul's key layout so that Consul's and concord's
//! clients contend for the same locks.
//!
//! One holder (`-n 1`): the key `<prefix>/.lock` is acquired with a session. A semaphore
//! (`-n N`): each contender acquires `<prefix>/<session>`, and `<prefix>/.lock` holds
//! `{"Limit": N, "Holders": {session: true}}`, updated with check-and-set; holders whose
//! contender key is gone (their session died) are pruned. The session has a 15s TTL and is
//! renewed while the command runs; if the lock is lost the command is killed.

use std::time::Duration;

use clap::{Arg, ArgMatches, Command};
use serde_json::{json, Value};
use tokio::process::Child;
use tokio::time::Instant;

use super::goflags::{boolean, get_bool, get_str, value};
use super::{client, with_http_flags, CommandResult};
use crate::api::client::{encode_path, encode_query, Client};
use crate::api::kv::decode_base64;
use crate::types::duration::parse_go_duration;

/// Consul's flag values marking lock and semaphore keys (api/lock.go, api/semaphore.go).
const LOCK_FLAG: u64 = 0x2ddc_cbc0_58a5_0c18;
const SEMAPHORE_FLAG: u64 = 0xe0f6_9a2b_aa41_4de0;
const SESSION_TTL: &str = "15s";
const RENEW_EVERY: Duration = Duration::from_millis(7500);
const WAIT: &str = "15s";
/// How long a failed check of the lock waits before the next (Consul's MonitorRetryTime).
const MONITOR_RETRY_PAUSE: Duration = Duration::from_secs(2);
/// How soon to try again when the lock looked free but acquiring failed (lock-delay).
const RETRY: Duration = Duration::from_millis(500);

pub fn command() -> Command {
    with_http_flags(
        Command::new("lock")
            .about("Runs a command while holding a lock (or one of N semaphore slots)")
            .arg(value("n", "How many holders may run at once (default 1)"))
            .arg(value("name", "Session name"))
            .arg(value(
                "timeout",
                "Give up acquiring after this long (e.g. 30s)",
            ))
            .arg(value("try", "Same as -timeout"))
            .arg(boolean(
                "shell",
                "Run the command through sh -c (default true)",
            ))
            .arg(boolean(
                "child-exit-code",
                "Exit with the command's exit code",
            ))
            .arg(boolean("verbose", "Print what the lock is doing"))
            .arg(boolean(
                "pass-stdin",
                "Pass this command's stdin to the child",
            ))
            .arg(value(
                "monitor-retry",
                "Times to retry a failed check that the lock is still held (default 3)",
            ))
            .arg(Arg::new("prefix").required(true))
            .arg(Arg::new("command").num_args(1..).required(true)),
    )
}

struct Lock {
    client: Client,
    prefix: String,
    session: String,
    limit: u64,
    verbose: bool,
    /// Consecutive failed checks of the lock tolerated before it counts as lost.
    monitor_retries: u32,
}

impl Lock {
    fn log(&self, message: &str) {
        if self.verbose {
            eprintln!("Lock: {message}");
        }
    }

    fn lock_key(&self) -> String {
        format!("{}/.lock", self.prefix)
    }

    fn contender_key(&self) -> String {
        format!("{}/{}", self.prefix, self.session)
    }

    async fn kv_put(&self, key: &str, query: &str, body: Vec<u8>) -> Result<bool, String> {
        let path = format!("/v1/kv/{}?{query}", encode_path(key));
        let response = self.client.put(&path, body).await?;
        Ok(response.json()? == Value::Bool(true))
    }

    /// Blocks until something under `path` changes after `index` (or the wait ends).
    async fn wait_for_change(&self, path: &str, index: u64) -> Result<u64, String> {
        let separator = if path.contains('?') { '&' } else { '?' };
        let response = self
            .client
            .get(&format!("{path}{separator}index={index}&wait={WAIT}"))
            .await?;
        Ok(response.index())
    }

    /// Tries once to take the lock or a semaphore slot.
    async fn try_acquire(&self) -> Result<(bool, u64), String> {
        if self.limit == 1 {
            let key = self.lock_key();
            let query = format!("acquire={}&flags={LOCK_FLAG}", encode_query(&self.session));
            if self.kv_put(&key, &query, Vec::new()).await? {
                return Ok((true, 0));
            }
            let response = self
                .client
                .get(&format!("/v1/kv/{}", encode_path(&key)))
                .await?;
            return Ok((false, response.index()));
        }
        let response = self
            .client
            .get(&format!("/v1/kv/{}/?recurse", encode_path(&self.prefix)))
            .await?;
        let index = response.index();
        let entries = if response.status == 404 {
            Vec::new()
        } else {
            response.json()?.as_array().cloned().unwrap_or_default()
        };
        let lock_key = self.lock_key();
        let lock_entry = entries
            .iter()
            .find(|entry| entry["Key"] == lock_key.as_str());
        let (modify_index, mut holders) = match lock_entry {
            Some(entry) => {
                let value = decode_base64(entry["Value"].as_str().unwrap_or_default())?;
                let record: Value = serde_json::from_slice(&value).unwrap_or(json!({}));
                let holders: Vec<String> = record["Holders"]
                    .as_object()
                    .map(|holders| holders.keys().cloned().collect())
                    .unwrap_or_default();
                (entry["ModifyIndex"].as_u64().unwrap_or(0), holders)
            }
            None => (0, Vec::new()),
        };
        // A holder whose contender key lost its session is dead: free its slot.
        let live = |session: &str| {
            entries.iter().any(|entry| {
                entry["Key"] == format!("{}/{session}", self.prefix).as_str()
                    && entry["Session"] == session
            })
        };
        holders.retain(|holder| live(holder));
        if holders.contains(&self.session) {
            return Ok((true, index));
        }
        if holders.len() as u64 >= self.limit {
            return Ok((false, index));
        }
        holders.push(self.session.clone());
        let record = json!({
            "Limit": self.limit,
            "Holders": holders.iter().map(|holder| (holder.clone(), Value::Bool(true))).collect::<serde_json::Map<_, _>>(),
        });
        let query = format!("cas={modify_index}&flags={SEMAPHORE_FLAG}");
        let taken = self
            .kv_put(&lock_key, &query, record.to_string().into_bytes())
            .await?;
        Ok((taken, index))
    }

    /// Acquires, waiting for changes between attempts, until `deadline`.
    async fn acquire(&self, deadline: Option<Instant>) -> Result<bool, String> {
        if self.limit > 1 {
            let query = format!(
                "acquire={}&flags={SEMAPHORE_FLAG}",
                encode_query(&self.session)
            );
            if !self
                .kv_put(&self.contender_key(), &query, Vec::new())
                .await?
            {
                return Err("Error! Failed to create the semaphore contender key".into());
            }
        }
        loop {
            let (taken, index) = self.try_acquire().await?;
            if taken {
                return Ok(true);
            }
            if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                return Ok(false);
            }
            let path = if self.limit == 1 {
                format!("/v1/kv/{}", encode_path(&self.lock_key()))
            } else {
                format!("/v1/kv/{}/?recurse", encode_path(&self.prefix))
            };
            let wait = async {
                let new_index = self.wait_for_change(&path, index).await?;
                if new_index == index {
                    // Nothing changed but the lock looked free: lock-delay. Try again soon.
                    tokio::time::sleep(RETRY).await;
                }
                Ok::<_, String>(())
            };
            match deadline {
                Some(deadline) => {
                    if tokio::time::timeout_at(deadline, wait).await.is_err() {
                        return Ok(false);
                    }
                }
                None => wait.await?,
            }
        }
    }

    /// Whether this process still holds what it acquired.
    async fn still_held(&self) -> Result<bool, String> {
        let key = if self.limit == 1 {
            self.lock_key()
        } else {
            self.contender_key()
        };
        let response = self
            .client
            .get(&format!("/v1/kv/{}", encode_path(&key)))
            .await?;
        if response.status == 404 {
            return Ok(false);
        }
        Ok(response.json()?[0]["Session"] == self.session.as_str())
    }

    async fn release(&self) -> Result<(), String> {
        if self.limit == 1 {
            let query = format!("release={}", encode_query(&self.session));
            self.kv_put(&self.lock_key(), &query, Vec::new()).await?;
        } else {
            // Remove this holder with check-and-set, retrying on a concurrent change.
            for _ in 0..16 {
                let path = format!("/v1/kv/{}", encode_path(&self.lock_key()));
                let response = self.client.get(&path).await?;
                if response.status == 404 {
                    break;
                }
                let entry = response.json()?[0].clone();
                let value = decode_base64(entry["Value"].as_str().unwrap_or_default())?;
                let mut record: Value = serde_json::from_slice(&value).unwrap_or(json!({}));
                if let Some(holders) = record["Holders"].as_object_mut() {
                    holders.remove(&self.session);
                }
                let query = format!(
                    "cas={}&flags={SEMAPHORE_FLAG}",
                    entry["ModifyIndex"].as_u64().unwrap_or(0)
                );
                if self
                    .kv_put(&self.lock_key(), &query, record.to_string().into_bytes())
                    .await?
                {
                    break;
                }
            }
            let path = format!("/v1/kv/{}", encode_path(&self.contender_key()));
            self.client.delete(&path).await?;
        }
        let path = format!("/v1/session/destroy/{}", encode_path(&self.session));
        self.client.put(&path, Vec::new()).await?;
        Ok(())
    }
}

fn spawn_child(matches: &ArgMatches) -> Result<Child, String> {
    let words: Vec<String> = matches
        .get_many::<String>("command")
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    let shell = matches.get_one::<bool>("shell").copied().unwrap_or(true);
    let mut command = if shell {
        let mut command = tokio::process::Command::new("sh");
        command.arg("-c").arg(words.join(" "));
        command
    } else {
        let mut command = tokio::process::Command::new(&words[0]);
        command.args(&words[1..]);
        command
    };
    // Consul's child reads nothing unless asked to share the lock command's stdin.
    if !get_bool(matches, "pass-stdin") {
        command.stdin(std::process::Stdio::null());
    }
    command
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| format!("Error! Failed to start {:?}: {error}", words.join(" ")))
}

pub async fn run(matches: &ArgMatches) -> CommandResult {
    let client = client(matches)?;
    let prefix = get_str(matches, "prefix")
        .unwrap_or("")
        .trim_end_matches('/')
        .to_string();
    let limit: u64 = get_str(matches, "n")
        .unwrap_or("1")
        .parse()
        .ok()
        .filter(|limit| *limit >= 1)
        .ok_or("Error! -n must be a positive number")?;
    let deadline = match get_str(matches, "try").or(get_str(matches, "timeout")) {
        Some(text) => Some(
            Instant::now()
                + parse_go_duration(text)
                    .map_err(|error| format!("Error! Invalid -try: {error}"))?,
        ),
        None => None,
    };
    let monitor_retries: u32 = get_str(matches, "monitor-retry")
        .unwrap_or("3")
        .parse()
        .map_err(|_| "Error! -monitor-retry must be a number")?;
    let default_name = if limit == 1 {
        "Consul API Lock"
    } else {
        "Consul API Semaphore"
    };
    let name = get_str(matches, "name").unwrap_or(default_name);
    let body = json!({"Name": name, "TTL": SESSION_TTL, "Behavior": "release"});
    let response = client
        .put("/v1/session/create", body.to_string().into_bytes())
        .await?;
    let session = response.json()?["ID"]
        .as_str()
        .ok_or("Error! The agent did not return a session ID")?
        .to_string();
    let lock = Lock {
        client,
        prefix,
        session,
        limit,
        verbose: get_bool(matches, "verbose"),
        monitor_retries,
    };
    lock.log(&format!("created session {}", lock.session));

    let acquired = tokio::select! {
        acquired = lock.acquire(deadline) => acquired,
        _ = renew_forever(&lock) => Ok(false),
    };
    match acquired {
        Ok(true) => {}
        Ok(false) => {
            let _ = lock.release().await;
            return Err("Shutdown triggered or timeout during lock acquisition".into());
        }
        Err(error) => {
            let _ = lock.release().await;
            return Err(error);
        }
    }
    lock.log("acquired; starting the command");
    let mut child = spawn_child(matches)?;
    let outcome = tokio::select! {
        status = child.wait() => status.map_err(|error| error.to_string()),
        lost = watch_lock(&lock) => {
            eprintln!("Lock lost ({lost}); terminating the command");
            let _ = child.kill().await;
            child.wait().await.map_err(|error| error.to_string())
        }
        _ = tokio::signal::ctrl_c() => {
            let _ = child.kill().await;
            child.wait().await.map_err(|error| error.to_string())
        }
    };
    lock.log("command finished; releasing");
    lock.release().await?;
    let status = outcome?;
    if get_bool(matches, "child-exit-code") && !status.success() {
        std::process::exit(status.code().unwrap_or(1));
    }
    Ok(())
}

/// Renews the session until it is gone; returns when renewal fails.
async fn renew_forever(lock: &Lock) -> String {
    loop {
        tokio::time::sleep(RENEW_EVERY).await;
        let path = format!("/v1/session/renew/{}", encode_path(&lock.session));
        match lock.client.put(&path, Vec::new()).await {
            Ok(response) if response.status.is_success() => {}
            Ok(response) => return format!("session renewal failed: {}", response.text()),
            Err(error) => return error.to_string(),
        }
    }
}

/// Returns (with the reason) once the lock is no longer held.
async fn watch_lock(lock: &Lock) -> String {
    let key = if lock.limit == 1 {
        lock.lock_key()
    } else {
        lock.contender_key()
    };
    let path = format!("/v1/kv/{}", encode_path(&key));
    let watch = async {
        let mut index = 0;
        let mut failures = 0;
        loop {
            let checked = match lock.still_held().await {
                Ok(true) => lock.wait_for_change(&path, index).await.map(Some),
                Ok(false) => Ok(None),
                Err(error) => Err(error),
            };
            match checked {
                Ok(Some(new_index)) => {
                    index = new_index;
                    failures = 0;
                }
                Ok(None) => return "the key is no longer held by this session".to_string(),
                // A server busy electing a leader answers 500 for a moment; Consul's lock
                // retries such a check (`-monitor-retry` times) before giving the lock up.
                Err(error) if failures < lock.monitor_retries => {
                    failures += 1;
                    lock.log(&format!("checking the lock failed ({error}); retrying"));
                    tokio::time::sleep(MONITOR_RETRY_PAUSE).await;
                }
                Err(error) => return error,
            }
        }
    };
    tokio::select! {
        reason = watch => reason,
        reason = renew_forever(lock) => reason,
    }
}
