//! The prepared-query table: writes with Consul's uniqueness rules, lookup by ID, name or the
//! longest template prefix, template rendering, and running a query against the catalog.
//! Everything here is deterministic; shuffling and distance sorting happen at the edges.

use std::sync::Arc;

use super::{health, Tables};
use crate::types::query::{PreparedQuery, QueryOp};
use crate::types::{ApplyError, HealthStatus, Node, RaftIndexes, Service};

pub const QUERIES_TOPIC: &str = "queries";

impl Tables {
    pub fn prepared_query(&self, id: &str) -> Option<&PreparedQuery> {
        self.queries.get(id).map(|query| &**query)
    }

    /// Every query, ordered by ID.
    pub fn prepared_queries(&self) -> impl Iterator<Item = &PreparedQuery> {
        self.queries.values().map(|query| &**query)
    }

    pub fn queries_index(&self) -> u64 {
        self.queries_index
    }
}

pub(super) fn apply(
    tables: &mut Tables,
    index: u64,
    op: &QueryOp,
    touched: &mut Vec<String>,
) -> Result<(), ApplyError> {
    match op {
        QueryOp::Set(query) => set(tables, index, query)?,
        QueryOp::Delete { id } => {
            if tables.queries.remove(id.as_str()).is_none() {
                return Ok(());
            }
        }
    }
    tables.queries_index = index;
    touched.push(QUERIES_TOPIC.into());
    Ok(())
}

/// Consul's integrity rules (its state store's): names are unique, never another query's ID,
/// only one template may have the empty name, and a bound session must exist.
fn set(tables: &mut Tables, index: u64, query: &PreparedQuery) -> Result<(), ApplyError> {
    let others = || {
        tables
            .prepared_queries()
            .filter(|other| other.id != query.id)
    };
    if !query.name.is_empty() {
        if others().any(|other| other.name == query.name) {
            return Err(ApplyError::QueryNameTaken(query.name.clone()));
        }
        if others().any(|other| other.id == query.name) {
            return Err(ApplyError::QueryNameIsAnId(query.name.clone()));
        }
    } else if query.is_template()
        && others().any(|other| other.is_template() && other.name.is_empty())
    {
        return Err(ApplyError::QueryCatchAllTaken);
    }
    if !query.session.is_empty() && tables.session(&query.session).is_none() {
        return Err(ApplyError::QuerySessionInvalid(query.session.clone()));
    }
    let mut stored = query.clone();
    stored.indexes = RaftIndexes {
        create: tables
            .prepared_query(&query.id)
            .map_or(index, |previous| previous.indexes.create),
        modify: index,
    };
    tables.queries.insert(query.id.clone(), Arc::new(stored));
    Ok(())
}

/// Deletes the queries bound to a session that ended.
pub(super) fn forget_session(
    tables: &mut Tables,
    index: u64,
    session: &str,
    touched: &mut Vec<String>,
) {
    let bound: Vec<String> = tables
        .prepared_queries()
        .filter(|query| query.session == session)
        .map(|query| query.id.clone())
        .collect();
    for id in bound {
        let _ = apply(tables, index, &QueryOp::Delete { id }, touched);
    }
}

/// Why a name could not be resolved to a query to run.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("prepared query templates can only be resolved up by name, not by ID")]
    TemplateById,
    #[error(transparent)]
    Template(#[from] TemplateError),
}

/// The query `id_or_name` runs, rendered if it is a template: an exact ID, else an exact
/// name, else the template with the longest name that prefixes it.
pub fn resolve(tables: &Tables, id_or_name: &str) -> Result<Option<PreparedQuery>, ResolveError> {
    if let Some(query) = tables.prepared_query(id_or_name) {
        if query.is_template() {
            return Err(ResolveError::TemplateById);
        }
        return Ok(Some(query.clone()));
    }
    let named = tables
        .prepared_queries()
        .find(|query| !query.name.is_empty() && query.name == id_or_name);
    let found = named.or_else(|| {
        tables
            .prepared_queries()
            .filter(|query| query.is_template() && id_or_name.starts_with(&query.name))
            .max_by_key(|query| query.name.len())
    });
    match found {
        Some(query) if query.is_template() => Ok(Some(render(query, id_or_name)?)),
        Some(query) => Ok(Some(query.clone())),
        None => Ok(None),
    }
}

/// Why a template's interpolations could not be read or evaluated.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("Bad Regexp: {0}")]
    Regexp(String),
    #[error("Bad format '{text}' in Service{path}: {reason}")]
    Format {
        text: String,
        path: String,
        reason: String,
    },
}

/// Checks a template as Consul compiles one on write: its regexp and every interpolation.
pub fn compile(query: &PreparedQuery) -> Result<(), TemplateError> {
    render(query, &query.name).map(|_| ())
}

/// The query a template gives for `name`: `${name.full}`, `${name.prefix}`, `${name.suffix}`
/// and `${match(N)}` (the template regexp's groups) replaced in every string of `Service`.
fn render(template: &PreparedQuery, name: &str) -> Result<PreparedQuery, TemplateError> {
    let matches: Vec<String> = if template.template.regexp.is_empty() {
        Vec::new()
    } else {
        let regexp = regex::Regex::new(&template.template.regexp)
            .map_err(|error| TemplateError::Regexp(error.to_string()))?;
        regexp
            .captures(name)
            .map(|captures| {
                captures
                    .iter()
                    .map(|group| group.map_or(String::new(), |g| g.as_str().to_string()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let scope = Scope {
        full: name,
        prefix: &template.name,
        matches: &matches,
    };
    let mut query = template.clone();
    let service = &mut query.service;
    service.service = scope.fill(&service.service, ".Service")?;
    service.near = scope.fill(&service.near, ".Near")?;
    for (position, tag) in service.tags.iter_mut().enumerate() {
        *tag = scope.fill(tag, &format!(".Tags[{position}]"))?;
    }
    for (position, id) in service.ignore_check_ids.iter_mut().enumerate() {
        *id = scope.fill(id, &format!(".IgnoreCheckIDs[{position}]"))?;
    }
    for (key, value) in service.node_meta.iter_mut() {
        *value = scope.fill(value, &format!(".NodeMeta[{key}]"))?;
    }
    for (key, value) in service.service_meta.iter_mut() {
        *value = scope.fill(value, &format!(".ServiceMeta[{key}]"))?;
    }
    if template.template.remove_empty_tags {
        service.tags.retain(|tag| !tag.is_empty());
    }
    Ok(query)
}

struct Scope<'a> {
    full: &'a str,
    prefix: &'a str,
    matches: &'a [String],
}

impl Scope<'_> {
    /// Replaces each `${expression}` in `text`.
    fn fill(&self, text: &str, path: &str) -> Result<String, TemplateError> {
        let bad = |reason: String| TemplateError::Format {
            text: text.to_string(),
            path: path.to_string(),
            reason,
        };
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| bad("unterminated interpolation".into()))?;
            out.push_str(&self.eval(after[..end].trim()).map_err(bad)?);
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    fn eval(&self, expression: &str) -> Result<String, String> {
        match expression {
            "name.full" => return Ok(self.full.to_string()),
            "name.prefix" => return Ok(self.prefix.to_string()),
            "name.suffix" => {
                return Ok(self
                    .full
                    .strip_prefix(self.prefix)
                    .unwrap_or(self.full)
                    .to_string())
            }
            "agent.segment" => return Ok(String::new()),
            _ => {}
        }
        let argument = expression
            .strip_prefix("match(")
            .and_then(|rest| rest.strip_suffix(')'))
            .ok_or_else(|| format!("unknown variable or function {expression:?}"))?;
        let group: usize = argument
            .trim()
            .parse()
            .map_err(|_| format!("match takes a group number, not {argument:?}"))?;
        Ok(self.matches.get(group).cloned().unwrap_or_default())
    }
}

/// The instances a query returns, in catalog order: its service's (or, with `connect`, the
/// ones taking its mesh traffic), healthy enough, carrying every required tag and none of the
/// excluded ones, and matching the node and service meta.
pub fn instances<'t>(
    tables: &'t Tables,
    query: &PreparedQuery,
    connect: bool,
) -> Vec<(&'t Node, &'t Service, HealthStatus)> {
    let service = &query.service;
    let rows: Vec<(&Node, &Service)> = if connect || service.connect {
        tables.connect_nodes(&service.service).collect()
    } else {
        tables.service_nodes(&service.service).collect()
    };
    let (required, excluded): (Vec<String>, Vec<String>) = {
        let lower: Vec<String> = service.tags.iter().map(|tag| tag.to_lowercase()).collect();
        let (excluded, required): (Vec<String>, Vec<String>) =
            lower.into_iter().partition(|tag| tag.starts_with('!'));
        (
            required,
            excluded
                .into_iter()
                .map(|tag| tag[1..].to_string())
                .collect(),
        )
    };
    rows.into_iter()
        .filter_map(|(node, instance)| {
            let health = health::worst(
                tables
                    .instance_checks(&node.name, &instance.id)
                    .filter(|check| !service.ignore_check_ids.contains(&check.check_id))
                    .map(|check| check.status),
            );
            let healthy = health::answers(health, service.only_passing);
            let tags: Vec<String> = instance.tags.iter().map(|tag| tag.to_lowercase()).collect();
            let tagged = required.iter().all(|tag| tags.contains(tag))
                && !excluded.iter().any(|tag| tags.contains(tag));
            let meta = |wanted: &std::collections::BTreeMap<String, String>,
                        have: &std::collections::BTreeMap<String, String>| {
                wanted
                    .iter()
                    .all(|(key, value)| have.get(key) == Some(value))
            };
            (healthy
                && tagged
                && meta(&service.node_meta, &node.meta)
                && meta(&service.service_meta, &instance.meta))
            .then_some((node, instance, health))
        })
        .collect()
}

/// The datacenters a query with no instances in `local` fails over to, in order: the
/// `NearestN` nearest of the `known` datacenters (`known` comes nearest first), then its
/// `Datacenters` list, each once and never `local`. HTTP and DNS execution share it.
pub fn failover_targets(query: &PreparedQuery, local: &str, known: &[String]) -> Vec<String> {
    let service = &query.service;
    let mut targets: Vec<String> = known
        .iter()
        .filter(|dc| *dc != local)
        .take(service.nearest_n as usize)
        .cloned()
        .collect();
    for dc in &service.datacenters {
        if dc != local && !targets.contains(dc) {
            targets.push(dc.clone());
        }
    }
    targets
}

/// Whether the query names anywhere to fail over to.
pub fn fails_over(query: &PreparedQuery) -> bool {
    query.service.nearest_n > 0 || !query.service.datacenters.is_empty()
}
