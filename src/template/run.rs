//! Rendering templates to files and keeping them current: every render notes the
//! dependencies it used; one without data is fetched at once and the templates rendered
//! again, until each is complete. Then (unless `-once`) each dependency in use is watched
//! with one blocking query, shared by every template that uses it; a change re-renders only
//! the templates that use it. A file is written (temporary file, then rename, permissions
//! kept) and its command run only when its content changed.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::deps::Dependency;
use super::funcs::Render;
use super::Template;
use crate::api::client::Client;
use crate::tasks::Tasks;

/// One `-template "source:destination[:command]"` or `template { }` block.
#[derive(Clone, Debug, Default)]
pub struct Spec {
    pub source: PathBuf,
    pub destination: PathBuf,
    pub command: Option<String>,
    /// Octal file mode; by default the existing file's, else 0644.
    pub perms: Option<u32>,
    pub backup: bool,
    pub delimiters: Option<(String, String)>,
}

#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Render once every template is complete, then exit.
    pub once: bool,
    /// Print to stdout instead of writing files or running commands.
    pub dry: bool,
    /// Quiescence: after a change, wait this long for more (up to the second figure).
    pub wait: Option<(Duration, Duration)>,
    /// `-exec`: a child started once every template is rendered, told of changes.
    pub exec: Option<Exec>,
}

/// consul-template's `exec { command reload_signal kill_signal kill_timeout splay }`.
#[derive(Clone, Debug)]
pub struct Exec {
    pub command: String,
    /// Sent on a change; `None` restarts the child instead (consul-template's default).
    pub reload_signal: Option<String>,
    pub kill_signal: String,
    pub kill_timeout: Duration,
    /// A random delay up to this before a reload, so many hosts do not reload at once.
    pub splay: Duration,
}

/// The supervised child of `-exec`.
struct Supervised {
    exec: Exec,
    child: tokio::process::Child,
}

impl Supervised {
    fn start(exec: &Exec) -> Result<Supervised, RunError> {
        let child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&exec.command)
            .kill_on_drop(true)
            .spawn()
            .map_err(|error| RunError(format!("-exec {}: {error}", exec.command)))?;
        tracing::info!(command = %exec.command, "started the -exec child");
        Ok(Supervised {
            exec: exec.clone(),
            child,
        })
    }

    fn signal(&self, signal: &str) {
        if let Some(pid) = self.child.id() {
            // `kill(1)` rather than raw syscalls: the crate has no unsafe code.
            let sent = std::process::Command::new("kill")
                .args(["-s", signal.trim_start_matches("SIG"), &pid.to_string()])
                .status();
            if !sent.is_ok_and(|status| status.success()) {
                tracing::warn!(%signal, pid, "could not signal the -exec child");
            }
        }
    }

    /// A template changed: signal the child, or stop it and start a new one.
    async fn reload(&mut self) -> Result<(), RunError> {
        if !self.exec.splay.is_zero() {
            let splay = rand::random::<f64>() * self.exec.splay.as_secs_f64();
            tokio::time::sleep(Duration::from_secs_f64(splay)).await;
        }
        match self.exec.reload_signal.clone() {
            Some(signal) => self.signal(&signal),
            None => {
                self.stop().await;
                *self = Supervised::start(&self.exec)?;
            }
        }
        Ok(())
    }

    async fn stop(&mut self) {
        self.signal(&self.exec.kill_signal.clone());
        if tokio::time::timeout(self.exec.kill_timeout, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Why rendering stopped: a template that does not parse, a failed write or command in
/// `-once`, or an agent that stayed unreachable.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RunError(String);

/// How long one blocking query waits at the agent.
const WATCH_WAIT: &str = "60s";
/// Attempts to reach the agent before `-once` gives up.
const ONCE_ATTEMPTS: u32 = 5;
/// Blocking queries sharing one HTTP/2 connection: below the streams an agent's connection
/// takes at once (hyper's server default, 200).
const WATCHES_PER_CONNECTION: usize = 150;

/// The connections watches run on: HTTP/2 ones shared by up to `WATCHES_PER_CONNECTION`
/// watches each when the agent speaks h2c (concord's does; a Consul agent does not), else
/// the HTTP/1.1 client, one connection per watch.
struct WatchClients {
    http2: Option<Client>,
    shards: Vec<(Client, usize)>,
    fallback: Client,
}

impl WatchClients {
    async fn new(client: &Client) -> WatchClients {
        let http2 = match client.http2() {
            Some(http2) => match http2.get("/v1/agent/self").await {
                Ok(_) => Some(http2),
                Err(error) => {
                    tracing::debug!(%error, "no HTTP/2 to the agent; one connection per watch");
                    None
                }
            },
            None => None,
        };
        WatchClients {
            http2,
            shards: Vec::new(),
            fallback: client.clone(),
        }
    }

    /// A client for one more watch, and its shard (to give back).
    fn take(&mut self) -> (Client, Option<usize>) {
        let Some(http2) = &self.http2 else {
            return (self.fallback.clone(), None);
        };
        let shard = match self
            .shards
            .iter()
            .position(|(_, count)| *count < WATCHES_PER_CONNECTION)
        {
            Some(shard) => shard,
            None => {
                // A client of its own is a connection of its own.
                let fresh = http2.http2().unwrap_or_else(|| http2.clone());
                self.shards.push((fresh, 0));
                self.shards.len() - 1
            }
        };
        self.shards[shard].1 += 1;
        (self.shards[shard].0.clone(), Some(shard))
    }

    fn give_back(&mut self, shard: Option<usize>) {
        if let Some((_, count)) = shard.and_then(|shard| self.shards.get_mut(shard)) {
            *count = count.saturating_sub(1);
        }
    }
}

struct Loaded {
    spec: Spec,
    template: Template,
    /// What the last render used; a change to any of these renders it again.
    used: BTreeSet<Dependency>,
    rendered: bool,
}

/// A dependency's new data from its watcher.
struct Update {
    dependency: Dependency,
    value: Value,
}

/// Runs until `shutdown` (or, with `-once`, until every template is rendered; with `-exec`,
/// until the child exits, whose exit code is returned).
pub async fn run(
    client: Client,
    specs: Vec<Spec>,
    options: Options,
    tasks: &Tasks,
) -> Result<Option<i32>, RunError> {
    let mut loaded = Vec::new();
    for spec in specs {
        let source = std::fs::read_to_string(&spec.source)
            .map_err(|error| RunError(format!("{}: {error}", spec.source.display())))?;
        let delimiters = spec
            .delimiters
            .as_ref()
            .map(|(left, right)| (left.as_str(), right.as_str()));
        let template = Template::parse(&spec.source.display().to_string(), &source, delimiters)
            .map_err(|error| RunError(error.to_string()))?;
        loaded.push(Loaded {
            spec,
            template,
            used: BTreeSet::new(),
            rendered: false,
        });
    }
    let agent_node = agent_node(&client, options.once).await?;
    let mut data: HashMap<Dependency, Value> = HashMap::new();
    // The index each dependency's data is at, so its watch starts there.
    let mut indexes: HashMap<Dependency, u64> = HashMap::new();
    let (updates, mut changed) = mpsc::channel::<Update>(256);
    let mut watched: HashMap<Dependency, (CancellationToken, Option<usize>)> = HashMap::new();
    let mut watch_clients: Option<WatchClients> = None;
    let shutdown = tasks.shutdown().clone();
    let mut dirty: BTreeSet<usize> = (0..loaded.len()).collect();
    let mut supervised: Option<Supervised> = None;
    loop {
        let mut changed_files = false;
        // Render what changed; fetch what a render lacked, and render again.
        loop {
            let mut missing = BTreeSet::new();
            for index in std::mem::take(&mut dirty) {
                let entry = &mut loaded[index];
                let mut render = Render::new(&data);
                let output = entry
                    .template
                    .render(&Value::Null, &mut render)
                    .map_err(|error| RunError(error.to_string()));
                entry.used = std::mem::take(&mut render.used);
                missing.extend(
                    entry
                        .used
                        .iter()
                        .filter(|d| !data.contains_key(*d))
                        .cloned(),
                );
                match (output, render.incomplete) {
                    (Err(error), _) if options.once => return Err(error),
                    (Err(error), _) => tracing::error!(%error, "template failed to render"),
                    (Ok(_), Some(reason)) => {
                        tracing::debug!(template = %entry.spec.source.display(), %reason, "not complete yet");
                    }
                    (Ok(text), None) => {
                        let written = deliver(&entry.spec, &text, options.dry).await;
                        match written {
                            Err(error) if options.once => return Err(error),
                            Err(error) => tracing::error!(%error, "cannot deliver a template"),
                            Ok(changed) => {
                                entry.rendered = true;
                                changed_files |= changed;
                            }
                        }
                    }
                }
            }
            if missing.is_empty() {
                break;
            }
            for dependency in &missing {
                let (value, index) =
                    fetch(&client, dependency, agent_node.as_deref(), options.once).await?;
                data.insert(dependency.clone(), value);
                indexes.insert(dependency.clone(), index);
            }
            dirty = (0..loaded.len())
                .filter(|index| loaded[*index].used.iter().any(|d| missing.contains(d)))
                .collect();
        }
        if options.once {
            if loaded.iter().all(|entry| entry.rendered) {
                return Ok(None);
            }
            let waiting: Vec<String> = loaded
                .iter()
                .filter(|entry| !entry.rendered)
                .map(|entry| entry.spec.source.display().to_string())
                .collect();
            return Err(RunError(format!(
                "templates could not be completed (a key that does not exist, or an empty safeLs): {}",
                waiting.join(", ")
            )));
        }
        if let Some(exec) = &options.exec {
            match supervised.as_mut() {
                None if loaded.iter().all(|entry| entry.rendered) => {
                    supervised = Some(Supervised::start(exec)?);
                }
                Some(child) if changed_files => child.reload().await?,
                _ => {}
            }
        }
        // Watch exactly what the templates use now.
        let in_use: BTreeSet<Dependency> = loaded.iter().flat_map(|e| e.used.clone()).collect();
        if watch_clients.is_none() {
            watch_clients = Some(WatchClients::new(&client).await);
        }
        let Some(watch_clients) = watch_clients.as_mut() else {
            return Ok(None);
        };
        watched.retain(|dependency, (stop, shard)| {
            let keep = in_use.contains(dependency);
            if !keep {
                stop.cancel();
                watch_clients.give_back(*shard);
            }
            keep
        });
        for dependency in in_use {
            if watched.contains_key(&dependency) {
                continue;
            }
            let stop = shutdown.child_token();
            let (watch_client, shard) = watch_clients.take();
            watched.insert(dependency.clone(), (stop.clone(), shard));
            let index = indexes.get(&dependency).copied().unwrap_or(0);
            tasks.spawn(
                "template.watch",
                watch(
                    watch_client,
                    dependency,
                    agent_node.clone(),
                    index,
                    updates.clone(),
                    stop,
                ),
            );
        }
        let child_exit = async {
            match supervised.as_mut() {
                Some(supervised) => supervised.child.wait().await.ok(),
                None => std::future::pending().await,
            }
        };
        let first = tokio::select! {
            _ = shutdown.cancelled() => {
                if let Some(mut supervised) = supervised.take() {
                    supervised.stop().await;
                }
                return Ok(None);
            }
            status = child_exit => {
                let code = status.and_then(|status| status.code()).unwrap_or(1);
                tracing::info!(code, "the -exec child exited");
                return Ok(Some(code));
            }
            update = changed.recv() => update,
        };
        let Some(first) = first else { return Ok(None) };
        let mut batch = vec![first];
        if let Some((min, max)) = options.wait {
            let deadline = tokio::time::Instant::now() + max;
            loop {
                let quiet = (tokio::time::Instant::now() + min).min(deadline);
                match tokio::time::timeout_at(quiet, changed.recv()).await {
                    Ok(Some(update)) => batch.push(update),
                    _ => break,
                }
            }
        }
        while let Ok(update) = changed.try_recv() {
            batch.push(update);
        }
        for Update { dependency, value } in batch {
            if data.get(&dependency) == Some(&value) {
                continue;
            }
            dirty.extend(
                (0..loaded.len()).filter(|index| loaded[*index].used.contains(&dependency)),
            );
            data.insert(dependency, value);
        }
    }
}

/// The agent's node name, for `node` without a name.
async fn agent_node(client: &Client, once: bool) -> Result<Option<String>, RunError> {
    let (value, _) = fetch(client, &Dependency::AgentSelf, None, once).await?;
    Ok(value["Config"]["NodeName"].as_str().map(str::to_string))
}

/// One non-blocking read and the index it is at, retried with backoff while the agent
/// cannot be reached (for `-once`, a few times; otherwise until it answers).
async fn fetch(
    client: &Client,
    dependency: &Dependency,
    agent_node: Option<&str>,
    once: bool,
) -> Result<(Value, u64), RunError> {
    let Some(path) = dependency.path(agent_node) else {
        return Ok((Value::Null, 0));
    };
    let mut backoff = Duration::from_millis(250);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let outcome = match client.get(&path).await {
            Ok(response) => dependency
                .decode(response.status.as_u16(), &response.body)
                .map(|value| (value, response.index()))
                .map_err(|error| format!("{path}: {error}")),
            Err(error) => Err(error.to_string()),
        };
        match outcome {
            Ok(value) => return Ok(value),
            Err(error) if once && attempt >= ONCE_ATTEMPTS => return Err(RunError(error)),
            Err(error) => {
                tracing::warn!(%error, "cannot read from the agent; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Follows one dependency with blocking queries from `index` (that of the data the renders
/// have), sending each new answer.
async fn watch(
    client: Client,
    dependency: Dependency,
    agent_node: Option<String>,
    mut index: u64,
    updates: mpsc::Sender<Update>,
    stop: CancellationToken,
) {
    let Some(path) = dependency.path(agent_node.as_deref()) else {
        return;
    };
    let separator = if path.contains('?') { '&' } else { '?' };
    let mut backoff = Duration::from_millis(250);
    loop {
        let url = match dependency.blocks() {
            true => format!("{path}{separator}index={index}&wait={WATCH_WAIT}"),
            false => path.clone(),
        };
        let answer = tokio::select! {
            _ = stop.cancelled() => return,
            answer = client.get(&url) => answer,
        };
        let decoded = answer
            .map_err(|error| error.to_string())
            .and_then(|response| {
                let next = response.index();
                dependency
                    .decode(response.status.as_u16(), &response.body)
                    .map(|value| (value, next))
                    .map_err(|error| format!("{path}: {error}"))
            });
        match decoded {
            Ok((value, next)) => {
                backoff = Duration::from_millis(250);
                // An index that went backwards (a restored snapshot) starts over.
                index = if next < index { 0 } else { next };
                if updates
                    .send(Update {
                        dependency: dependency.clone(),
                        value,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
                if !dependency.blocks() {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, "watch failed; retrying (the last rendered files stay)");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Writes `text` to the destination when it differs from what is there, then runs the
/// command; with `dry`, prints it instead. Whether the file changed.
async fn deliver(spec: &Spec, text: &str, dry: bool) -> Result<bool, RunError> {
    let destination = &spec.destination;
    if dry {
        println!("> {}\n{text}", destination.display());
        return Ok(false);
    }
    if std::fs::read_to_string(destination).is_ok_and(|current| current == text) {
        return Ok(false);
    }
    write_atomically(spec, text)
        .map_err(|error| RunError(format!("{}: {error}", destination.display())))?;
    tracing::info!(destination = %destination.display(), "rendered");
    if let Some(command) = &spec.command {
        let status = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .status()
            .await
            .map_err(|error| RunError(format!("{command}: {error}")))?;
        if !status.success() {
            return Err(RunError(format!("{command}: exited with {status}")));
        }
    }
    Ok(true)
}

fn write_atomically(spec: &Spec, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let destination = &spec.destination;
    let dir = destination
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let existing = std::fs::metadata(destination).ok();
    let mode = spec
        .perms
        .or_else(|| {
            existing
                .as_ref()
                .map(|meta| meta.permissions().mode() & 0o7777)
        })
        .unwrap_or(0o644);
    let mut staged = tempfile::Builder::new()
        .prefix(".concord-template-")
        .tempfile_in(dir)?;
    staged.write_all(text.as_bytes())?;
    staged.as_file().sync_all()?;
    std::fs::set_permissions(staged.path(), std::fs::Permissions::from_mode(mode))?;
    if spec.backup && existing.is_some() {
        let mut backup = destination.as_os_str().to_owned();
        backup.push(".bak");
        std::fs::copy(destination, PathBuf::from(backup))?;
    }
    staged.persist(destination).map_err(|error| error.error)?;
    Ok(())
}
