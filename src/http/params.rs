//! Query parameters and the options every read shares: blocking (`index`, `wait`),
//! consistency (`stale`, `consistent`), `dc`, `pretty`, `filter`, and the ACL token.
//!
//! Parameters are parsed from the raw query string because Consul repeats some (`?tag=a&tag=b`)
//! and uses others without a value (`?recurse`).

use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use percent_encoding::percent_decode_str;
use rand::Rng;

use super::error::ApiError;
use super::AppState;
use crate::filter::Filter;
use crate::rpc::Consistency;
use crate::types::duration::parse_go_duration;

/// The decoded query string plus the two request headers handlers use. Only those are kept:
/// a blocking query holds its `Call` for minutes, so it should not hold a copy of every header.
pub struct Call {
    pairs: Vec<(String, String)>,
    /// `X-Consul-Token`, else the bearer token of `Authorization`.
    header_token: Option<String>,
    /// The declared body length, if any.
    pub content_length: Option<u64>,
}

fn decode(text: &str) -> String {
    percent_decode_str(&text.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

impl Call {
    pub fn parse(query: Option<&str>, headers: &HeaderMap) -> Call {
        let pairs = query
            .unwrap_or("")
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| match pair.split_once('=') {
                Some((key, value)) => (decode(key), decode(value)),
                None => (decode(pair), String::new()),
            })
            .collect();
        let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
        let header_token = header("X-Consul-Token").map(str::to_string).or_else(|| {
            // The scheme is case-insensitive; the token is the first word after it.
            let value = header("Authorization")?;
            let (scheme, rest) = value.trim_start().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| rest.split_whitespace().next())
                .flatten()
                .map(str::to_string)
        });
        let content_length = header("Content-Length").and_then(|value| value.parse().ok());
        Call {
            pairs,
            header_token,
            content_length,
        }
    }

    pub fn has(&self, name: &str) -> bool {
        self.pairs.iter().any(|(key, _)| key == name)
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs
            .iter()
            .filter(move |(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// A numeric parameter (`cas`, `flags`). Consul passes the parse error of Go's
    /// `strconv.ParseUint` through as a 500, and clients see exactly that.
    pub fn number(&self, name: &str) -> Result<Option<u64>, ApiError> {
        self.get(name)
            .map(|text| {
                text.parse::<u64>().map_err(|_| {
                    ApiError::Internal(format!(
                        "strconv.ParseUint: parsing {text:?}: invalid syntax"
                    ))
                })
            })
            .transpose()
    }

    /// The ACL token: `?token=`, then `X-Consul-Token`, then `Authorization: Bearer`.
    pub fn token(&self) -> Option<String> {
        self.get("token")
            .map(str::to_string)
            .or_else(|| self.header_token.clone())
    }

    /// Rejects a `?dc=` naming a datacenter this agent cannot reach.
    pub fn check_datacenter(&self, state: &AppState) -> Result<(), ApiError> {
        match self.get("dc") {
            // Consul's ErrNoDCPath, word for word: clients match on it.
            Some(dc) if !dc.is_empty() && dc != state.config.datacenter => {
                Err(ApiError::Internal("No path to datacenter".into()))
            }
            _ => Ok(()),
        }
    }

    pub fn pretty(&self, state: &AppState) -> bool {
        state.config.always_pretty || self.has("pretty")
    }

    /// Parses the options a read endpoint shares.
    pub fn read_options(&self, state: &AppState) -> Result<ReadOptions, ApiError> {
        self.check_datacenter(state)?;
        let index = self
            .get("index")
            .map(|text| {
                text.parse::<u64>()
                    .map_err(|_| ApiError::BadRequest("Invalid index".into()))
            })
            .transpose()?
            .unwrap_or(0);
        let limits = &state.config.query;
        let wait = match self.get("wait") {
            Some(text) => parse_go_duration(text)
                .map_err(|_| ApiError::BadRequest("Invalid wait time".into()))?,
            None => limits.default_query_time,
        };
        let wait = wait.min(limits.max_query_time);
        // Consul adds up to wait/16 of random jitter so that many watchers of one thing do
        // not all come back at the same instant.
        let jitter_ms = (wait.as_millis() / 16) as u64;
        let wait = wait + Duration::from_millis(rand::thread_rng().gen_range(0..=jitter_ms));
        let consistency = match (self.has("stale"), self.has("consistent")) {
            (true, true) => {
                return Err(ApiError::BadRequest(
                    "Cannot specify ?stale with ?consistent, conflicting semantics.".into(),
                ))
            }
            (true, false) => Consistency::Stale,
            (false, true) => Consistency::Consistent,
            (false, false) => Consistency::Leader,
        };
        let cached = self.has("cached");
        if cached && consistency == Consistency::Consistent {
            return Err(ApiError::BadRequest(
                "Cannot specify ?cached with ?consistent, conflicting semantics.".into(),
            ));
        }
        let filter = match self.get("filter") {
            Some(expression) if !expression.trim().is_empty() => Some(Filter::parse(expression)?),
            _ => None,
        };
        // `?node-meta=key:value`, repeatable: every pair must be in the node's meta.
        let node_meta = self
            .all("node-meta")
            .map(|pair| {
                let (key, value) = pair.split_once(':').unwrap_or((pair, ""));
                (key.to_string(), value.to_string())
            })
            .collect();
        Ok(ReadOptions {
            index,
            wait,
            consistency,
            pretty: self.pretty(state),
            filter,
            node_meta,
            peer: self.get("peer").unwrap_or_default().to_string(),
            cached,
        })
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Call {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Call, Self::Rejection> {
        Ok(Call::parse(parts.uri.query(), &parts.headers))
    }
}

/// Options shared by every read endpoint.
pub struct ReadOptions {
    /// Block until the result's index exceeds this (0: answer at once).
    pub index: u64,
    /// How long to block at most, jitter included.
    pub wait: Duration,
    pub consistency: Consistency,
    pub pretty: bool,
    pub filter: Option<Filter>,
    /// `?node-meta=key:value` pairs a node must all carry.
    pub node_meta: Vec<(String, String)>,
    /// `?peer=`: the cluster peer whose imported data to read. concord has no peerings, so
    /// only the local data (no peer) exists and any named peer reads empty.
    pub peer: String,
    /// `?cached`: the answer carries Consul's `X-Cache` and `Age` (see `reply`).
    pub cached: bool,
}

impl ReadOptions {
    /// Whether a node's data is in this read: it is local (no peer asked for) and carries
    /// every `?node-meta` pair.
    pub fn node_selected(&self, node: &crate::types::Node) -> bool {
        self.peer.is_empty()
            && self
                .node_meta
                .iter()
                .all(|(key, value)| node.meta.get(key) == Some(value))
    }

    /// Keeps the elements of a JSON list the filter matches.
    pub fn filter_list(&self, items: Vec<serde_json::Value>) -> Vec<serde_json::Value> {
        match &self.filter {
            Some(filter) => items
                .into_iter()
                .filter(|item| filter.matches(item))
                .collect(),
            None => items,
        }
    }
}

/// A boolean as Go's `strconv.ParseBool` reads it, which is how Consul reads every boolean
/// query parameter (clients send `True`, `1`, `t` as well as `true`).
pub fn go_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod go_bool_tests {
    #[test]
    fn booleans_read_as_go_reads_them() {
        for yes in ["1", "t", "T", "true", "TRUE", "True"] {
            assert_eq!(super::go_bool(yes), Some(true), "{yes}");
        }
        for no in ["0", "f", "F", "false", "FALSE", "False"] {
            assert_eq!(super::go_bool(no), Some(false), "{no}");
        }
        for neither in ["", "yes", "tRUE", "2"] {
            assert_eq!(super::go_bool(neither), None, "{neither}");
        }
    }
}
