//! consul-template's functions. The API ones read the data fetched for each dependency and
//! note every dependency a render used; one without data yet (or a `key` that does not
//! exist, or an empty `safeLs`) makes the render incomplete, so nothing is written until
//! it is. The helpers take their piped argument last, as consul-template's do.

use std::collections::{BTreeSet, HashMap};

use base64::Engine;
use serde_json::{json, Map, Value};

use super::deps::Dependency;
use super::exec::{print, Functions};

/// One render's view of the fetched data, and what it needed.
pub struct Render<'a> {
    pub data: &'a HashMap<Dependency, Value>,
    /// Every dependency the template asked for.
    pub used: BTreeSet<Dependency>,
    /// Why the output is not ready to write, if it is not.
    pub incomplete: Option<String>,
}

impl<'a> Render<'a> {
    pub fn new(data: &'a HashMap<Dependency, Value>) -> Render<'a> {
        Render {
            data,
            used: BTreeSet::new(),
            incomplete: None,
        }
    }

    fn get(&mut self, dependency: Dependency) -> Option<Value> {
        let value = self.data.get(&dependency).cloned();
        if value.is_none() {
            self.incomplete
                .get_or_insert_with(|| format!("waiting for {dependency:?}"));
        }
        self.used.insert(dependency);
        value
    }
}

fn text(args: &[Value], at: usize, function: &str) -> Result<String, String> {
    match args.get(at) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Ok(print(other)),
        None => Err(format!("{function}: missing argument {}", at + 1)),
    }
}

fn arity(
    function: &str,
    args: &[Value],
    range: std::ops::RangeInclusive<usize>,
) -> Result<(), String> {
    match range.contains(&args.len()) {
        true => Ok(()),
        false => Err(format!(
            "wrong number of args for {function}: want {} got {}",
            match range.start() == range.end() {
                true => range.start().to_string(),
                false => format!("{} to {}", range.start(), range.end()),
            },
            args.len()
        )),
    }
}

fn number(value: &Value) -> Result<f64, String> {
    match value {
        Value::Number(n) => n.as_f64().ok_or_else(|| "not a number".to_string()),
        Value::String(s) => s
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not a number")),
        other => Err(format!("{} is not a number", print(other))),
    }
}

/// A number as Go would hold it: an integer when it is whole and both operands were.
fn numeric(result: f64, integers: bool) -> Value {
    match integers && result.fract() == 0.0 && result.abs() < 9.0e15 {
        true => json!(result as i64),
        false => json!(result),
    }
}

/// Go's `encoding/json`: maps in key order.
fn sorted_json(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let mut out = Map::new();
            for key in keys {
                out.insert(key.clone(), sorted_json(&map[key]));
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted_json).collect()),
        other => other.clone(),
    }
}

/// Puts `value` at `path` in nested maps, replacing a value that stood where a map must.
fn insert_path(map: &mut Map<String, Value>, path: &[&str], value: Value) {
    match path {
        [] => {}
        [last] => {
            map.insert(last.to_string(), value);
        }
        [first, rest @ ..] => {
            let next = map
                .entry(first.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if !next.is_object() {
                *next = Value::Object(Map::new());
            }
            if let Value::Object(inner) = next {
                insert_path(inner, rest, value);
            }
        }
    }
}

/// Whether `list` (a list, or a string searched for a substring) contains `value`.
fn within(list: &Value, value: &Value) -> Result<bool, String> {
    match (list, value) {
        (Value::Array(items), value) => Ok(items.contains(value)),
        (Value::String(s), Value::String(sub)) => Ok(s.contains(sub.as_str())),
        (Value::Null, _) => Ok(false),
        (other, _) => Err(format!("cannot search in {}", print(other))),
    }
}

/// Go's time layout (`2006-01-02T15:04:05Z07:00`) as chrono-free strftime pieces.
fn timestamp(layout: Option<&str>) -> String {
    let now = time::OffsetDateTime::now_utc();
    let layout = layout.unwrap_or("2006-01-02T15:04:05Z07:00");
    let pieces: [(&str, String); 12] = [
        ("2006", format!("{:04}", now.year())),
        ("Z07:00", "Z".into()),
        ("-0700", "+0000".into()),
        ("MST", "UTC".into()),
        ("Jan", format!("{:.3}", now.month().to_string())),
        ("Mon", format!("{:.3}", now.weekday().to_string())),
        ("01", format!("{:02}", u8::from(now.month()))),
        ("02", format!("{:02}", now.day())),
        ("15", format!("{:02}", now.hour())),
        ("04", format!("{:02}", now.minute())),
        ("05", format!("{:02}", now.second())),
        ("06", format!("{:02}", now.year() % 100)),
    ];
    let mut out = String::new();
    let mut rest = layout;
    'outer: while !rest.is_empty() {
        for (token, value) in &pieces {
            if let Some(after) = rest.strip_prefix(token) {
                out.push_str(value);
                rest = after;
                continue 'outer;
            }
        }
        let c = rest.chars().next().unwrap_or_default();
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

impl Functions for Render<'_> {
    fn call(&mut self, name: &str, args: Vec<Value>) -> Option<Result<Value, String>> {
        let args = args.as_slice();
        let result = match name {
            "service" | "connect" => (|| {
                arity(name, args, 1..=2)?;
                let mut spec = text(args, 0, name)?;
                if let Some(filter) = args.get(1) {
                    spec = format!("{spec}|{}", print(filter));
                }
                let dependency = Dependency::service(&spec, name == "connect")?;
                Ok(self.get(dependency).unwrap_or(json!([])))
            })(),
            "services" => (|| {
                arity(name, args, 0..=1)?;
                let spec = args.first().map(print);
                Ok(self
                    .get(Dependency::services(spec.as_deref()))
                    .unwrap_or(json!([])))
            })(),
            "node" => (|| {
                arity(name, args, 0..=1)?;
                let spec = args.first().map(print);
                Ok(self
                    .get(Dependency::node(spec.as_deref()))
                    .unwrap_or(Value::Null))
            })(),
            "nodes" => (|| {
                arity(name, args, 0..=1)?;
                let spec = args.first().map(print);
                Ok(self
                    .get(Dependency::nodes(spec.as_deref()))
                    .unwrap_or(json!([])))
            })(),
            "datacenters" => Ok(self.get(Dependency::Datacenters).unwrap_or(json!([]))),
            "key" => (|| {
                arity(name, args, 1..=1)?;
                let path = text(args, 0, name)?;
                match self.get(Dependency::key(&path)) {
                    Some(Value::String(value)) => Ok(Value::String(value)),
                    Some(_) => {
                        // consul-template waits for a key that does not exist.
                        self.incomplete
                            .get_or_insert_with(|| format!("key {path:?} does not exist"));
                        Ok(Value::String(String::new()))
                    }
                    None => Ok(Value::String(String::new())),
                }
            })(),
            "keyOrDefault" => (|| {
                arity(name, args, 2..=2)?;
                let path = text(args, 0, name)?;
                // Never waits: until data arrives, and when the key is absent, the default.
                let value = self.data.get(&Dependency::key(&path)).cloned();
                self.used.insert(Dependency::key(&path));
                Ok(match value {
                    Some(Value::String(value)) => Value::String(value),
                    _ => args[1].clone(),
                })
            })(),
            "keyExists" => (|| {
                arity(name, args, 1..=1)?;
                let path = text(args, 0, name)?;
                let value = self.data.get(&Dependency::key(&path)).cloned();
                self.used.insert(Dependency::key(&path));
                Ok(Value::Bool(matches!(value, Some(Value::String(_)))))
            })(),
            "ls" | "tree" | "safeLs" | "safeTree" => (|| {
                arity(name, args, 1..=1)?;
                let prefix = text(args, 0, name)?;
                let pairs = self.get(Dependency::prefix(&prefix)).unwrap_or(Value::Null);
                let all = pairs.as_array().cloned().unwrap_or_default();
                let tree = matches!(name, "tree" | "safeTree");
                let chosen: Vec<Value> = all
                    .into_iter()
                    .filter(|pair| {
                        let key = pair["Key"].as_str().unwrap_or_default();
                        // Folders are not pairs; ls keeps only the top level.
                        !key.is_empty() && !key.ends_with('/') && (tree || !key.contains('/'))
                    })
                    .collect();
                if name.starts_with("safe") && chosen.is_empty() {
                    self.incomplete
                        .get_or_insert_with(|| format!("{name} {prefix:?} is empty"));
                }
                Ok(Value::Array(chosen))
            })(),
            "caRoots" => Ok(self.get(Dependency::CaRoots).unwrap_or(json!([]))),
            "caLeaf" => (|| {
                arity(name, args, 1..=1)?;
                Ok(self
                    .get(Dependency::CaLeaf(text(args, 0, name)?))
                    .unwrap_or(Value::Null))
            })(),
            "env" => text(args, 0, name).map(|var| json!(std::env::var(var).unwrap_or_default())),
            "file" => text(args, 0, name).and_then(|path| {
                std::fs::read_to_string(&path)
                    .map(Value::String)
                    .map_err(|error| format!("{path}: {error}"))
            }),
            "timestamp" => Ok(json!(match args.first().and_then(Value::as_str) {
                Some("unix") => time::OffsetDateTime::now_utc().unix_timestamp().to_string(),
                layout => timestamp(layout),
            })),
            "explode" => arity(name, args, 1..=1).map(|()| {
                let mut root = Map::new();
                for pair in args[0].as_array().into_iter().flatten() {
                    let key = pair["Key"].as_str().unwrap_or_default();
                    let parts: Vec<&str> = key.split('/').filter(|p| !p.is_empty()).collect();
                    insert_path(&mut root, &parts, pair["Value"].clone());
                }
                Value::Object(root)
            }),
            "byTag" => (|| {
                arity(name, args, 1..=1)?;
                let mut out = Map::new();
                for service in args[0].as_array().into_iter().flatten() {
                    for tag in service["Tags"].as_array().into_iter().flatten() {
                        let tag = print(tag);
                        if let Some(list) =
                            out.entry(tag).or_insert_with(|| json!([])).as_array_mut()
                        {
                            list.push(service.clone());
                        }
                    }
                }
                Ok(Value::Object(out))
            })(),
            "byKey" => (|| {
                arity(name, args, 1..=1)?;
                let mut out = Map::new();
                for pair in args[0].as_array().into_iter().flatten() {
                    let key = pair["Key"].as_str().unwrap_or_default();
                    let Some((top, rest)) = key.split_once('/') else {
                        continue;
                    };
                    let mut pair = pair.clone();
                    pair["Key"] = json!(rest);
                    if let Some(group) = out
                        .entry(top.to_string())
                        .or_insert_with(|| json!({}))
                        .as_object_mut()
                    {
                        group.insert(rest.to_string(), pair);
                    }
                }
                Ok(Value::Object(out))
            })(),
            "contains" => {
                arity(name, args, 2..=2).and_then(|()| within(&args[1], &args[0]).map(Value::Bool))
            }
            "in" => {
                arity(name, args, 2..=2).and_then(|()| within(&args[0], &args[1]).map(Value::Bool))
            }
            "containsAll" | "containsAny" | "containsNone" | "containsNotAll" => (|| {
                arity(name, args, 2..=2)?;
                let wanted = args[0].as_array().cloned().unwrap_or_default();
                let mut found = Vec::new();
                for value in &wanted {
                    found.push(within(&args[1], value)?);
                }
                Ok(Value::Bool(match name {
                    "containsAll" => found.iter().all(|f| *f),
                    "containsAny" => found.iter().any(|f| *f),
                    "containsNone" => !found.iter().any(|f| *f),
                    _ => !found.iter().all(|f| *f),
                }))
            })(),
            "join" => arity(name, args, 2..=2).and_then(|()| {
                let separator = text(args, 0, name)?;
                Ok(json!(args[1]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(print)
                    .collect::<Vec<_>>()
                    .join(&separator)))
            }),
            "split" => arity(name, args, 2..=2).and_then(|()| {
                let separator = text(args, 0, name)?;
                let subject = text(args, 1, name)?;
                Ok(match subject.is_empty() {
                    true => json!([]),
                    false => json!(subject.split(separator.as_str()).collect::<Vec<_>>()),
                })
            }),
            "replaceAll" => arity(name, args, 3..=3).and_then(|()| {
                Ok(json!(
                    text(args, 2, name)?.replace(&text(args, 0, name)?, &text(args, 1, name)?)
                ))
            }),
            "toLower" => text(args, 0, name).map(|s| json!(s.to_lowercase())),
            "toUpper" => text(args, 0, name).map(|s| json!(s.to_uppercase())),
            "toTitle" => text(args, 0, name).map(|s| {
                json!(s
                    .split(' ')
                    .map(|word| {
                        let mut chars = word.chars();
                        chars.next().map_or_else(String::new, |first| {
                            first.to_uppercase().collect::<String>() + chars.as_str()
                        })
                    })
                    .collect::<Vec<_>>()
                    .join(" "))
            }),
            "trimSpace" => text(args, 0, name).map(|s| json!(s.trim())),
            "indent" => arity(name, args, 2..=2).and_then(|()| {
                let width = number(&args[0])? as usize;
                let pad = " ".repeat(width);
                let body = text(args, 1, name)?;
                Ok(json!(body
                    .split('\n')
                    .map(|line| format!("{pad}{line}"))
                    .collect::<Vec<_>>()
                    .join("\n")))
            }),
            "toJSON" => arity(name, args, 1..=1)
                .map(|()| json!(serde_json::to_string(&sorted_json(&args[0])).unwrap_or_default())),
            "toJSONPretty" => arity(name, args, 1..=1).map(|()| {
                json!(serde_json::to_string_pretty(&sorted_json(&args[0])).unwrap_or_default())
            }),
            "parseJSON" => text(args, 0, name)
                .and_then(|s| serde_json::from_str(&s).map_err(|error| error.to_string())),
            "parseInt" => text(args, 0, name).and_then(|s| {
                s.trim()
                    .parse::<i64>()
                    .map(|n| json!(n))
                    .map_err(|_| format!("parseInt: {s:?} is not an integer"))
            }),
            "parseFloat" => text(args, 0, name).and_then(|s| {
                s.trim()
                    .parse::<f64>()
                    .map(|n| json!(n))
                    .map_err(|_| format!("parseFloat: {s:?} is not a number"))
            }),
            "parseBool" => text(args, 0, name).and_then(|s| match s.trim() {
                "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(json!(true)),
                "0" | "f" | "F" | "false" | "FALSE" | "False" | "" => Ok(json!(false)),
                other => Err(format!("parseBool: {other:?} is not a boolean")),
            }),
            "base64Encode" | "base64URLEncode" => text(args, 0, name).map(|s| {
                json!(match name {
                    "base64Encode" => base64::engine::general_purpose::STANDARD.encode(s),
                    _ => base64::engine::general_purpose::URL_SAFE.encode(s),
                })
            }),
            "base64Decode" | "base64URLDecode" => text(args, 0, name).and_then(|s| {
                let engine = match name {
                    "base64Decode" => base64::engine::general_purpose::STANDARD,
                    _ => base64::engine::general_purpose::URL_SAFE,
                };
                engine
                    .decode(s.trim())
                    .map(|bytes| json!(String::from_utf8_lossy(&bytes)))
                    .map_err(|error| format!("{name}: {error}"))
            }),
            "sha256Hex" => text(args, 0, name).map(|s| {
                let digest = ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
                json!(digest
                    .as_ref()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>())
            }),
            "regexMatch" => arity(name, args, 2..=2).and_then(|()| {
                let pattern =
                    regex::Regex::new(&text(args, 0, name)?).map_err(|e| e.to_string())?;
                Ok(json!(pattern.is_match(&text(args, 1, name)?)))
            }),
            "regexReplaceAll" => arity(name, args, 3..=3).and_then(|()| {
                let pattern =
                    regex::Regex::new(&text(args, 0, name)?).map_err(|e| e.to_string())?;
                Ok(json!(pattern
                    .replace_all(&text(args, 2, name)?, text(args, 1, name)?.as_str())
                    .into_owned()))
            }),
            "loop" => (|| {
                arity(name, args, 1..=2)?;
                let (start, end) = match args {
                    [end] => (0, number(end)? as i64),
                    _ => (number(&args[0])? as i64, number(&args[1])? as i64),
                };
                Ok(json!((start..end).collect::<Vec<_>>()))
            })(),
            "add" | "subtract" | "multiply" | "divide" | "modulo" | "minimum" | "maximum" => {
                (|| {
                    arity(name, args, 2..=2)?;
                    // The piped value is the left operand: `{{ 5 | subtract 2 }}` is 3.
                    let (b, a) = (number(&args[0])?, number(&args[1])?);
                    let integers = args.iter().all(|v| v.as_i64().is_some());
                    if matches!(name, "divide" | "modulo") && b == 0.0 {
                        return Err(format!("{name}: division by zero"));
                    }
                    let result = match name {
                        "add" => a + b,
                        "subtract" => a - b,
                        "multiply" => a * b,
                        "divide" if integers => (a / b).trunc(),
                        "divide" => a / b,
                        "modulo" => a % b,
                        "minimum" => a.min(b),
                        _ => a.max(b),
                    };
                    Ok(numeric(result, integers))
                })()
            }
            _ => return None,
        };
        Some(result)
    }
}
