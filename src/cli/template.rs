//! `concord template`: consul-template's command line (`-template "in:out[:command]"`,
//! `-once`, `-dry`, `-wait min[:max]`, `-config` files with `template { }` and
//! `consul { address token }` blocks) over `crate::template::run`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgMatches, Command};
use serde_json::Value;

use super::goflags::{boolean, get_bool, get_str, repeated, value};
use super::{client_or, with_http_flags, CommandResult};
use crate::template::run::{self, Options, Spec};
use crate::types::duration::parse_go_duration;

pub fn command() -> Command {
    with_http_flags(
        Command::new("template")
            .about("Renders templates from the catalog and KV into files, and keeps them current")
            .arg(repeated(
                "template",
                "source:destination[:command], repeatable",
            ))
            .arg(repeated(
                "config",
                "A config file (HCL or JSON) with template blocks",
            ))
            .arg(boolean("once", "Render once and exit"))
            .arg(boolean("dry", "Print to stdout instead of writing files"))
            .arg(value(
                "exec",
                "A command to run once every template is rendered, and to reload on changes",
            ))
            .arg(value(
                "exec-reload-signal",
                "Signal for the -exec child on a change (default: restart it)",
            ))
            .arg(value(
                "exec-kill-signal",
                "Signal that stops the -exec child (default SIGINT)",
            ))
            .arg(value(
                "exec-kill-timeout",
                "How long the -exec child may take to stop (default 30s)",
            ))
            .arg(value(
                "exec-splay",
                "Random delay up to this before a reload (default 0s)",
            ))
            .arg(value(
                "wait",
                "Quiescence after a change before rendering: min[:max] (default max 4 × min)",
            )),
    )
}

fn wait(text: &str) -> Result<(Duration, Duration), String> {
    let parse = |part: &str| {
        parse_go_duration(part.trim()).map_err(|error| format!("-wait {text:?}: {error}"))
    };
    let (min, max) = match text.split_once(':') {
        Some((min, max)) => (parse(min)?, parse(max)?),
        None => {
            let min = parse(text)?;
            (min, min * 4)
        }
    };
    if max < min {
        return Err(format!("-wait {text:?}: max is less than min"));
    }
    Ok((min, max))
}

/// `source:destination[:command]` (the command may itself hold colons).
fn spec(text: &str) -> Result<Spec, String> {
    let mut parts = text.splitn(3, ':');
    let source = parts.next().unwrap_or_default();
    let destination = parts.next().unwrap_or_default();
    if source.is_empty() || destination.is_empty() {
        return Err(format!(
            "-template {text:?}: want source:destination[:command]"
        ));
    }
    Ok(Spec {
        source: PathBuf::from(source),
        destination: PathBuf::from(destination),
        command: parts.next().map(str::to_string).filter(|c| !c.is_empty()),
        ..Spec::default()
    })
}

/// The `template` blocks and `consul` block of a consul-template config file.
/// consul-template's `exec` block, or the `-exec*` flags over it.
fn exec(matches: &ArgMatches, block: &Value) -> Result<Option<run::Exec>, String> {
    let pick = |flag: &str, key: &str| {
        get_str(matches, flag)
            .map(str::to_string)
            .or_else(|| block[key].as_str().map(str::to_string))
            .filter(|text| !text.is_empty())
    };
    let Some(command) = pick("exec", "command") else {
        return Ok(None);
    };
    let duration = |flag: &str, key: &str, default: Duration| {
        pick(flag, key)
            .map(|text| parse_go_duration(&text).map_err(|error| format!("-{flag}: {error}")))
            .transpose()
            .map(|parsed| parsed.unwrap_or(default))
    };
    Ok(Some(run::Exec {
        command,
        reload_signal: pick("exec-reload-signal", "reload_signal"),
        kill_signal: pick("exec-kill-signal", "kill_signal").unwrap_or_else(|| "SIGINT".into()),
        kill_timeout: duration("exec-kill-timeout", "kill_timeout", Duration::from_secs(30))?,
        splay: duration("exec-splay", "splay", Duration::ZERO)?,
    }))
}

fn config_file(path: &str) -> Result<(Vec<Spec>, Option<Duration>, Value), String> {
    let text = std::fs::read_to_string(path).map_err(|error| format!("{path}: {error}"))?;
    let config: Value = match path.ends_with(".json") {
        true => serde_json::from_str(&text).map_err(|error| format!("{path}: {error}"))?,
        false => hcl::from_str(&text).map_err(|error| format!("{path}: {error}"))?,
    };
    let blocks = match &config["template"] {
        Value::Array(blocks) => blocks.clone(),
        Value::Object(_) => vec![config["template"].clone()],
        Value::Null => Vec::new(),
        other => return Err(format!("{path}: template must be a block, not {other}")),
    };
    let mut specs = Vec::new();
    for block in blocks {
        let field = |name: &str| block[name].as_str().map(str::to_string);
        let source = field("source").ok_or_else(|| format!("{path}: template without source"))?;
        let destination =
            field("destination").ok_or_else(|| format!("{path}: template without destination"))?;
        let perms = match &block["perms"] {
            Value::Number(n) => n.as_u64().map(|n| n as u32),
            Value::String(s) => Some(
                u32::from_str_radix(s.trim_start_matches("0o"), 8)
                    .map_err(|_| format!("{path}: perms {s:?} is not an octal mode"))?,
            ),
            _ => None,
        };
        let delimiters = match (field("left_delimiter"), field("right_delimiter")) {
            (None, None) => None,
            (left, right) => Some((
                left.unwrap_or_else(|| "{{".into()),
                right.unwrap_or_else(|| "}}".into()),
            )),
        };
        specs.push(Spec {
            source: source.into(),
            destination: destination.into(),
            command: field("command"),
            perms,
            backup: block["backup"].as_bool().unwrap_or(false),
            delimiters,
        });
    }
    let wait = config["wait"]["min"]
        .as_str()
        .map(|min| parse_go_duration(min).map_err(|error| format!("{path}: wait.min: {error}")))
        .transpose()?;
    Ok((
        specs,
        wait,
        serde_json::json!({"consul": config["consul"], "exec": config["exec"]}),
    ))
}

pub async fn run(matches: &ArgMatches) -> CommandResult {
    let mut specs = Vec::new();
    let mut options = Options {
        once: get_bool(matches, "once"),
        dry: get_bool(matches, "dry"),
        wait: get_str(matches, "wait").map(wait).transpose()?,
        exec: None,
    };
    let mut consul = Value::Null;
    let mut exec_block = Value::Null;
    for path in matches.get_many::<String>("config").into_iter().flatten() {
        let (more, config_wait, config_consul) = config_file(path)?;
        specs.extend(more);
        if options.wait.is_none() {
            options.wait = config_wait.map(|min| (min, min * 4));
        }
        if !config_consul["consul"].is_null() {
            consul = config_consul["consul"].clone();
        }
        if !config_consul["exec"].is_null() {
            exec_block = config_consul["exec"].clone();
        }
    }
    for text in matches.get_many::<String>("template").into_iter().flatten() {
        specs.push(spec(text)?);
    }
    options.exec = exec(matches, &exec_block)?;
    if specs.is_empty() {
        return Err("at least one -template or a -config with a template block is required".into());
    }
    // The config's consul block stands in for -http-addr and -token, as consul-template's.
    let client = client_or(
        matches,
        consul["address"].as_str(),
        consul["token"].as_str(),
    )?;
    let tasks = crate::tasks::Tasks::new();
    let stop = tasks.shutdown().clone();
    tasks.spawn("template.signals", async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    let result = run::run(client, specs, options, &tasks).await;
    tasks.shutdown().cancel();
    match result.map_err(|error| error.to_string())? {
        // The -exec child's exit is this command's, as consul-template's.
        Some(code) if code != 0 => std::process::exit(code),
        _ => Ok(()),
    }
}
