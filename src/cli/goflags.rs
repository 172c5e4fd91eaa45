//! Go-style flags on top of clap: Consul's CLI uses Go's `flag` package, so `-sidecar-for web`,
//! `-flag=value`, `--flag value` and `-recurse` (a boolean) must all work, and flags stop at the
//! first positional argument. `normalize` rewrites such arguments into clap's form by asking the
//! clap command tree which flags take values.

use std::ffi::OsString;

use clap::{Arg, ArgAction, Command};

/// A boolean flag: `-name`, `-name=true`, `-name=false`.
pub fn boolean(name: &'static str, help: &'static str) -> Arg {
    Arg::new(name)
        .long(name)
        .help(help)
        .num_args(0..=1)
        .require_equals(true)
        .default_missing_value("true")
        .value_parser(clap::value_parser!(bool))
        .action(ArgAction::Set)
}

/// A flag taking one value: `-name value` or `-name=value`.
pub fn value(name: &'static str, help: &'static str) -> Arg {
    Arg::new(name)
        .long(name)
        .help(help)
        .num_args(1)
        .allow_hyphen_values(true)
        .action(ArgAction::Set)
}

/// A repeatable flag taking one value each time.
pub fn repeated(name: &'static str, help: &'static str) -> Arg {
    value(name, help).action(ArgAction::Append)
}

pub fn get_bool(matches: &clap::ArgMatches, name: &str) -> bool {
    matches.get_one::<bool>(name).copied().unwrap_or(false)
}

pub fn get_str<'a>(matches: &'a clap::ArgMatches, name: &str) -> Option<&'a str> {
    matches.get_one::<String>(name).map(String::as_str)
}

/// Rewrites Go-style arguments for clap (see the module docs).
pub fn normalize(root: &Command, args: Vec<OsString>) -> Vec<OsString> {
    let mut out = Vec::with_capacity(args.len() + 1);
    let mut args = args.into_iter();
    if let Some(program) = args.next() {
        out.push(program);
    }
    let mut command = root;
    let mut positional_seen = false;
    let mut value_expected = false;
    for arg in args {
        let text = arg.to_string_lossy().into_owned();
        if positional_seen {
            out.push(arg);
            continue;
        }
        if value_expected {
            value_expected = false;
            out.push(arg);
            continue;
        }
        if text == "--" {
            positional_seen = true;
            out.push(arg);
            continue;
        }
        if let Some(flag) = text.strip_prefix('-').filter(|rest| !rest.is_empty()) {
            let flag = flag.strip_prefix('-').unwrap_or(flag);
            let (name, has_value) = match flag.split_once('=') {
                Some((name, _)) => (name, true),
                None => (flag, false),
            };
            if name == "h" || name == "help" {
                out.push("--help".into());
                continue;
            }
            let takes_value = command
                .get_arguments()
                .find(|known| known.get_long() == Some(name))
                .is_some_and(|known| {
                    known.get_action().takes_values() && !known.is_require_equals_set()
                });
            value_expected = takes_value && !has_value;
            out.push(format!("--{flag}").into());
            continue;
        }
        // A subcommand name descends; anything else is the first positional argument, after
        // which Go stops parsing flags.
        if let Some(sub) = command.find_subcommand(&text) {
            command = sub;
            out.push(arg);
            continue;
        }
        positional_seen = true;
        if command.get_positionals().next().is_some() {
            out.push("--".into());
        }
        out.push(arg);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> Command {
        Command::new("concord").subcommand(
            Command::new("kv").subcommand(
                Command::new("put")
                    .arg(boolean("base64", ""))
                    .arg(value("flags", ""))
                    .arg(Arg::new("key"))
                    .arg(Arg::new("data")),
            ),
        )
    }

    fn run(args: &[&str]) -> Vec<String> {
        normalize(&tree(), args.iter().map(OsString::from).collect())
            .into_iter()
            .map(|arg| arg.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn single_dash_long_flags_become_double_dash() {
        assert_eq!(
            run(&["concord", "kv", "put", "-flags", "5", "-base64", "k", "v"]),
            ["concord", "kv", "put", "--flags", "5", "--base64", "--", "k", "v"]
        );
    }

    #[test]
    fn equals_form_and_values_starting_with_dash_are_kept() {
        assert_eq!(
            run(&["concord", "kv", "put", "-flags=-1", "-base64=false", "k"]),
            [
                "concord",
                "kv",
                "put",
                "--flags=-1",
                "--base64=false",
                "--",
                "k"
            ]
        );
    }

    #[test]
    fn flags_stop_at_the_first_positional() {
        assert_eq!(
            run(&["concord", "kv", "put", "k", "-not-a-flag"]),
            ["concord", "kv", "put", "--", "k", "-not-a-flag"]
        );
    }

    #[test]
    fn clap_parses_the_normalized_form() {
        let args = normalize(
            &tree(),
            ["concord", "kv", "put", "-flags", "7", "-base64", "key", "-"]
                .iter()
                .map(OsString::from)
                .collect(),
        );
        let matches = tree().try_get_matches_from(args).expect("parse");
        let (_, kv) = matches.subcommand().expect("kv");
        let (_, put) = kv.subcommand().expect("put");
        assert_eq!(get_str(put, "flags"), Some("7"));
        assert!(get_bool(put, "base64"));
        assert_eq!(get_str(put, "key"), Some("key"));
        assert_eq!(get_str(put, "data"), Some("-"));
    }
}
