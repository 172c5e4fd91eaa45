//! `concord info` (the agent's `Stats`, as `consul info` prints them) and `concord debug` (a
//! bundle an operator attaches to a bug report, as `consul debug` makes it: the agent's self
//! and members, metrics every interval, the agent's logs over the capture, and host facts,
//! in a directory or a `.tar.gz`). concord has no Go profiler, so `pprof` captures nothing
//! and says so in the bundle's index.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{ArgMatches, Command};

use super::goflags::{boolean, get_str, repeated, value};
use super::{client, with_http_flags, CommandResult};
use crate::types::duration::{format_rfc3339, parse_go_duration, unix_now};

/// Consul's shortest `-interval`; `-duration` must be at least one interval.
const MIN_INTERVAL: Duration = Duration::from_secs(5);
/// What `-capture` may name (Consul's targets).
const TARGETS: [&str; 6] = ["metrics", "logs", "pprof", "host", "agent", "members"];

pub fn info_command() -> Command {
    with_http_flags(Command::new("info").about("Prints the agent's runtime statistics"))
}

pub fn debug_command() -> Command {
    with_http_flags(
        Command::new("debug")
            .about("Captures the agent's state, metrics and logs for a bug report")
            .arg(value("duration", "How long to capture (default 5m)"))
            .arg(value(
                "interval",
                "How often to capture metrics (default 30s)",
            ))
            .arg(repeated(
                "capture",
                "What to capture (repeatable): metrics, logs, pprof, host, agent, members",
            ))
            .arg(value(
                "output",
                "Where to write the bundle (default consul-debug-<time>)",
            ))
            .arg(boolean(
                "archive",
                "Write a .tar.gz instead of a directory (default true)",
            ))
            .arg(value("since", "Ignored: logs are captured from now on")),
    )
}

/// `consul info`: each `Stats` section, its keys sorted, as `section:` then `\tkey = value`.
pub async fn info(matches: &ArgMatches) -> CommandResult {
    let client = client(matches)?;
    let response = client.get("/v1/agent/self").await?;
    if !response.status.is_success() {
        return Err(format!(
            "Error querying agent: Unexpected response code: {} ({})",
            response.status.as_u16(),
            response.text()
        ));
    }
    let me = response.json()?;
    let stats = me["Stats"]
        .as_object()
        .ok_or("Error querying agent: no Stats in /v1/agent/self")?;
    let mut sections: Vec<_> = stats.iter().collect();
    sections.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = String::new();
    for (section, values) in sections {
        out.push_str(&format!("{section}:\n"));
        let mut keys: Vec<_> = values.as_object().into_iter().flatten().collect();
        keys.sort_by(|a, b| a.0.cmp(b.0));
        for (key, value) in keys {
            let value = value
                .as_str()
                .map_or_else(|| value.to_string(), str::to_string);
            out.push_str(&format!("\t{key} = {value}\n"));
        }
    }
    print!("{out}");
    Ok(())
}

pub async fn debug(matches: &ArgMatches) -> CommandResult {
    let duration = duration_flag(matches, "duration", Duration::from_secs(300))?;
    let interval = duration_flag(matches, "interval", Duration::from_secs(30))?;
    if interval < MIN_INTERVAL {
        return Err(format!(
            "interval must be longer than {}",
            crate::types::duration::format_go_duration(MIN_INTERVAL)
        ));
    }
    if duration < interval {
        return Err("duration must be longer than interval".to_string());
    }
    let captures: Vec<String> = match matches.get_many::<String>("capture") {
        Some(values) => values.cloned().collect(),
        None => TARGETS.iter().map(|t| t.to_string()).collect(),
    };
    if let Some(bad) = captures.iter().find(|c| !TARGETS.contains(&c.as_str())) {
        return Err(format!(
            "Invalid capture target {bad:?}; must be one of {}",
            TARGETS.join(", ")
        ));
    }
    let wants = |target: &str| captures.iter().any(|c| c == target);
    let archive = matches.get_one::<bool>("archive").copied().unwrap_or(true);
    let stamp = unix_now();
    let output = PathBuf::from(
        get_str(matches, "output")
            .map(str::to_string)
            .unwrap_or_else(|| format!("consul-debug-{stamp}")),
    );
    let client = client(matches)?;
    // Fail before waiting for the whole duration when the agent cannot be read.
    let me = client.get("/v1/agent/self").await?;
    if !me.status.is_success() {
        return Err(format!(
            "error querying target agent: {}. verify connectivity and agent address",
            me.text()
        ));
    }
    if output.exists() || archive && tar_path(&output).exists() {
        return Err(format!(
            "output directory already exists: {}",
            output.display()
        ));
    }
    std::fs::create_dir_all(&output)
        .map_err(|error| format!("could not create output directory: {error}"))?;
    let write = |name: &str, bytes: &[u8]| -> CommandResult {
        let path = output.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::write(&path, bytes).map_err(|error| format!("{}: {error}", path.display()))
    };
    if wants("agent") {
        write("agent.json", pretty(&me.json()?).as_bytes())?;
    }
    if wants("members") {
        let members = client.get("/v1/agent/members").await?;
        write("members.json", pretty(&members.json()?).as_bytes())?;
    }
    if wants("host") {
        write("host.json", pretty(&host()).as_bytes())?;
    }
    eprintln!(
        "==> Capturing for {} (every {}) into {}",
        crate::types::duration::format_go_duration(duration),
        crate::types::duration::format_go_duration(interval),
        output.display()
    );
    let started = Instant::now();
    let logs = async {
        let mut log = Vec::new();
        if wants("logs") {
            let _ = tokio::time::timeout(
                duration,
                client.stream("/v1/agent/monitor?loglevel=debug", |chunk| {
                    log.extend_from_slice(chunk)
                }),
            )
            .await;
        }
        log
    };
    let metrics = async {
        let mut snapshots = Vec::new();
        if wants("metrics") {
            loop {
                let at = format_rfc3339(unix_now()).replace(':', "-");
                if let Ok(response) = client.get("/v1/agent/metrics").await {
                    snapshots.push((at, response.text()));
                }
                let next = started.elapsed() + interval;
                if next > duration {
                    break;
                }
                tokio::time::sleep_until(tokio::time::Instant::from_std(started + next)).await;
            }
        }
        snapshots
    };
    let (log, snapshots) = tokio::join!(logs, metrics);
    if wants("logs") {
        write("consul.log", &log)?;
    }
    for (at, body) in &snapshots {
        write(&format!("{at}/metrics.json"), body.as_bytes())?;
    }
    let index = serde_json::json!({
        "Version": 2,
        "AgentVersion": me.json()?["Config"]["Version"],
        "Interval": crate::types::duration::format_go_duration(interval),
        "Duration": crate::types::duration::format_go_duration(duration),
        "Targets": captures,
        "Notes": if wants("pprof") { "pprof: concord has no Go profiler; nothing captured" } else { "" },
    });
    write("index.json", pretty(&index).as_bytes())?;
    if archive {
        let tarball = tar_path(&output);
        pack(&output, &tarball)?;
        std::fs::remove_dir_all(&output)
            .map_err(|error| format!("{}: {error}", output.display()))?;
        eprintln!("Saved debug archive: {}", tarball.display());
    } else {
        eprintln!("Saved debug directory: {}", output.display());
    }
    Ok(())
}

fn duration_flag(matches: &ArgMatches, name: &str, default: Duration) -> Result<Duration, String> {
    match get_str(matches, name) {
        None => Ok(default),
        Some(text) => parse_go_duration(text)
            .map_err(|_| format!("invalid value {text:?} for flag -{name}: parse error")),
    }
}

fn tar_path(output: &Path) -> PathBuf {
    let mut name = output.as_os_str().to_owned();
    name.push(".tar.gz");
    PathBuf::from(name)
}

fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

/// What Consul's `host` capture holds that a Linux machine can tell without extra crates.
fn host() -> serde_json::Value {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .map(|text| text.trim().to_string())
            .unwrap_or_default()
    };
    serde_json::json!({
        "Host": {
            "hostname": read("/proc/sys/kernel/hostname"),
            "os": std::env::consts::OS,
            "kernelVersion": read("/proc/sys/kernel/osrelease"),
            "kernelArch": std::env::consts::ARCH,
            "uptime": read("/proc/uptime").split_whitespace().next().unwrap_or_default(),
        },
        "CPU": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "Memory": read("/proc/meminfo").lines().take(3).collect::<Vec<_>>(),
        "CollectionTime": unix_now() * 1_000_000_000,
    })
}

/// The directory as `<dir>.tar.gz`, its entries under the directory's own name.
fn pack(dir: &Path, tarball: &Path) -> CommandResult {
    let file = std::fs::File::create(tarball)
        .map_err(|error| format!("{}: {error}", tarball.display()))?;
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let name = dir.file_name().unwrap_or(dir.as_os_str());
    tar.append_dir_all(name, dir)
        .map_err(|error| format!("could not archive {}: {error}", dir.display()))?;
    let gz = tar
        .into_inner()
        .map_err(|error| format!("could not archive: {error}"))?;
    gz.finish()
        .map_err(|error| format!("could not archive: {error}"))?
        .sync_all()
        .map_err(|error| format!("could not archive: {error}"))
}
