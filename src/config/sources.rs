//! Config sources: files and directories in JSON or HCL, `-hcl` fragments and flags, each
//! turned into a JSON value and merged in order (later wins for scalars, objects merge, lists
//! append), as Consul merges its sources.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::ConfigError;

/// The format of one config source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Hcl,
}

impl Format {
    pub fn parse(name: &str) -> Result<Format, ConfigError> {
        match name {
            "json" => Ok(Format::Json),
            "hcl" => Ok(Format::Hcl),
            other => Err(ConfigError::new(format!(
                "invalid config format {other:?}: must be json or hcl"
            ))),
        }
    }

    fn of_path(path: &Path) -> Option<Format> {
        match path.extension().and_then(|ext| ext.to_str()) {
            Some("json") => Some(Format::Json),
            Some("hcl") => Some(Format::Hcl),
            _ => None,
        }
    }
}

/// One parsed source and where it came from, for error messages.
pub struct Source {
    pub name: String,
    pub value: Value,
}

pub fn parse_text(name: &str, text: &str, format: Format) -> Result<Source, ConfigError> {
    let value: Value = match format {
        Format::Json => serde_json::from_str(text)
            .map_err(|error| ConfigError::new(format!("{name}: {error}")))?,
        Format::Hcl => {
            hcl::from_str(text).map_err(|error| ConfigError::new(format!("{name}: {error}")))?
        }
    };
    if !value.is_object() {
        return Err(ConfigError::new(format!(
            "{name}: config must be an object at the top level"
        )));
    }
    Ok(Source {
        name: name.to_string(),
        value,
    })
}

/// Reads one config file; its format comes from `forced` or else its extension.
pub fn read_file(path: &Path, forced: Option<Format>) -> Result<Source, ConfigError> {
    let format = forced.or_else(|| Format::of_path(path)).ok_or_else(|| {
        ConfigError::new(format!(
            "{}: config files must end in .json or .hcl (or set -config-format)",
            path.display()
        ))
    })?;
    let text = std::fs::read_to_string(path).map_err(|error| {
        ConfigError::new(format!(
            "cannot read config file {}: {error}",
            path.display()
        ))
    })?;
    parse_text(&path.display().to_string(), &text, format)
}

/// The `.json` and `.hcl` files of a config dir, in lexical order; other files are skipped,
/// as Consul skips them.
pub fn dir_files(dir: &Path, forced: Option<Format>) -> Result<Vec<PathBuf>, ConfigError> {
    let entries = std::fs::read_dir(dir).map_err(|error| {
        ConfigError::new(format!("cannot read config dir {}: {error}", dir.display()))
    })?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|error| {
                ConfigError::new(format!("cannot read config dir {}: {error}", dir.display()))
            })?
            .path();
        let wanted = forced.is_some() || Format::of_path(&path).is_some();
        if path.is_file() && wanted {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Merges `overlay` into `base`: objects merge key by key, lists append, anything else is
/// replaced.
pub fn merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Object(base), Value::Object(overlay)) => {
            for (key, value) in overlay {
                match base.get_mut(&key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (Value::Array(base), Value::Array(overlay)) => base.extend(overlay),
        (base, overlay) => *base = overlay,
    }
}

/// Builds a nested JSON object from a dotted key, for flags such as `ports.http`.
pub fn flag_value(dotted_key: &str, value: Value) -> Value {
    let mut parts = dotted_key.rsplit('.');
    let last = parts.next().unwrap_or(dotted_key);
    let mut current = Value::Object(Map::from_iter([(last.to_string(), value)]));
    for part in parts {
        current = Value::Object(Map::from_iter([(part.to_string(), current)]));
    }
    current
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_overrides_scalars_merges_objects_and_appends_lists() {
        let mut base = json!({"a": 1, "ports": {"http": 1, "dns": 2}, "list": [1]});
        merge(
            &mut base,
            json!({"a": 2, "ports": {"http": 3}, "list": [2]}),
        );
        assert_eq!(
            base,
            json!({"a": 2, "ports": {"http": 3, "dns": 2}, "list": [1, 2]})
        );
    }

    #[test]
    fn flag_values_nest_by_dots() {
        assert_eq!(
            flag_value("ports.http", json!(8501)),
            json!({"ports": {"http": 8501}})
        );
    }

    #[test]
    fn hcl_and_json_parse_to_the_same_shape() {
        let hcl = parse_text(
            "a.hcl",
            "datacenter = \"east\"\nports { http = 1 }",
            Format::Hcl,
        )
        .expect("hcl");
        let json = parse_text(
            "a.json",
            r#"{"datacenter": "east", "ports": {"http": 1}}"#,
            Format::Json,
        )
        .expect("json");
        assert_eq!(hcl.value, json.value);
    }

    #[test]
    fn errors_name_the_source() {
        let error = parse_text("bad.json", "{", Format::Json)
            .err()
            .expect("error")
            .to_string();
        assert!(error.starts_with("bad.json:"), "{error}");
    }
}
