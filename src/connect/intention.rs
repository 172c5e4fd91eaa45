//! Intentions: which source services may talk to which destinations.
//!
//! They are stored as `service-intentions` config entries (one per destination, `*` included)
//! and read here as a flat list of `Intention`s, the legacy API's shape. Precedence is
//! Consul's: exact->exact 9, *->exact 8, exact->* 6, *->* 5; the highest-precedence intention
//! whose source and destination match decides. At equal precedence a deny sorts first, so an
//! ambiguity can only ever fail closed.

use std::sync::Arc;

use crate::state::Tables;
use crate::types::config_entry::{self as ce, precedence, SourceIntention, Typed};
use crate::types::connect::ConfigEntry;

/// One intention: a source of a `service-intentions` entry, seen with its destination.
#[derive(Clone, Debug)]
pub struct Intention {
    pub entry: Arc<ConfigEntry>,
    /// Position of the source inside the entry's typed view.
    pub position: usize,
    pub precedence: u32,
}

impl Intention {
    pub fn destination(&self) -> &str {
        &self.entry.name
    }

    fn typed(&self) -> Arc<Typed> {
        self.entry.typed()
    }

    /// Runs `f` on the source definition.
    pub fn with_source<T>(&self, f: impl FnOnce(&SourceIntention) -> T) -> T {
        match self.typed().as_ref() {
            Typed::Intentions(intentions) => f(&intentions.sources[self.position]),
            // Only service-intentions entries ever become intentions.
            _ => f(&SourceIntention::default()),
        }
    }

    pub fn source(&self) -> String {
        self.with_source(|source| source.name.clone())
    }

    /// `allow`/`deny` for an L4 intention; `""` for L7 (it has Permissions instead).
    pub fn action(&self) -> String {
        self.with_source(|source| source.action.clone())
    }

    pub fn is_l7(&self) -> bool {
        self.with_source(SourceIntention::is_l7)
    }

    /// `default/web => default/db (Precedence: 9, Action: ALLOW)`, as Consul's authorize
    /// reasons print an intention.
    pub fn describe(&self) -> String {
        let detail = self.with_source(|source| match &source.permissions {
            Some(permissions) if !permissions.is_empty() => {
                format!("Permissions: {}", permissions.len())
            }
            _ => format!("Action: {}", source.action.to_ascii_uppercase()),
        });
        format!(
            "default/{} => default/{} (Precedence: {}, {detail})",
            self.source(),
            self.destination(),
            self.precedence
        )
    }

    /// `web => db (allow)`, as the CLI prints an intention.
    pub fn short(&self) -> String {
        let detail = self.with_source(|source| match &source.permissions {
            Some(permissions) if permissions.len() == 1 => "1 permission".to_string(),
            Some(permissions) if !permissions.is_empty() => {
                format!("{} permissions", permissions.len())
            }
            _ => source.action.clone(),
        });
        format!("{} => {} ({detail})", self.source(), self.destination())
    }
}

/// Sorts by precedence (highest first), deny before allow, then names, as Consul lists them.
/// Keys are computed once per intention: comparing would otherwise re-read each source's
/// typed view for every comparison.
pub fn sort(intentions: &mut [Intention]) {
    intentions.sort_by_cached_key(|intention| {
        let (source, deny) =
            intention.with_source(|source| (source.name.clone(), source.action != "deny"));
        (
            std::cmp::Reverse(intention.precedence),
            deny,
            source,
            intention.destination().to_string(),
        )
    });
}

fn of_entry(
    entry: &Arc<ConfigEntry>,
    mut keep: impl FnMut(&SourceIntention) -> bool,
) -> Vec<Intention> {
    let typed = entry.typed();
    let Typed::Intentions(intentions) = typed.as_ref() else {
        return Vec::new();
    };
    intentions
        .sources
        .iter()
        .enumerate()
        .filter(|(_, source)| keep(source))
        .map(|(position, source)| Intention {
            entry: entry.clone(),
            position,
            precedence: precedence(&source.name, &entry.name),
        })
        .collect()
}

/// Every intention, sorted.
pub fn all(tables: &Tables) -> Vec<Intention> {
    let mut list: Vec<Intention> = tables
        .config_entries_of(ce::SERVICE_INTENTIONS)
        .flat_map(|entry| of_entry(entry, |_| true))
        .collect();
    sort(&mut list);
    list
}

/// The intention from `source` to `destination` exactly as named (`*` included), if any.
pub fn exact(tables: &Tables, source: &str, destination: &str) -> Option<Intention> {
    let entry = tables.config_entry(ce::SERVICE_INTENTIONS, destination)?;
    of_entry(entry, |candidate| {
        candidate.peer.is_empty() && candidate.name == source
    })
    .into_iter()
    .next()
}

/// Intentions that apply to `destination` (its own and the `*` entry's), sorted.
pub fn match_destination(tables: &Tables, destination: &str) -> Vec<Intention> {
    let mut list = Vec::new();
    for name in [destination, "*"] {
        if let Some(entry) = tables.config_entry(ce::SERVICE_INTENTIONS, name) {
            list.extend(of_entry(entry, |_| true));
        }
        if destination == "*" {
            break;
        }
    }
    sort(&mut list);
    list
}

/// Intentions whose source is `source` or `*`, sorted.
pub fn match_source(tables: &Tables, source: &str) -> Vec<Intention> {
    let mut list: Vec<Intention> = tables
        .config_entries_of(ce::SERVICE_INTENTIONS)
        .flat_map(|entry| {
            of_entry(entry, |candidate| {
                candidate.peer.is_empty() && (candidate.name == source || candidate.name == "*")
            })
        })
        .collect();
    sort(&mut list);
    list
}

/// An authorization decision and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: String,
}

/// What applies when no intention matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefaultPolicy {
    /// `default_intention_policy` set in the agent's config.
    Configured { allow: bool },
    /// Falls back to the ACL default policy.
    Acl { allow: bool },
}

impl DefaultPolicy {
    /// `default_intention_policy` when set, else the ACL default policy.
    pub fn new(default_intention_policy: Option<&str>, acl_default_policy: &str) -> DefaultPolicy {
        match default_intention_policy {
            Some(policy) => DefaultPolicy::Configured {
                allow: policy == "allow",
            },
            None => DefaultPolicy::Acl {
                allow: acl_default_policy == "allow",
            },
        }
    }
}

/// The highest-precedence intention matching (`source`, `destination`), found without
/// listing: the candidates in precedence order are (dst, src), (dst, *), (*, src), (*, *).
pub fn matching(tables: &Tables, source: &str, destination: &str) -> Option<Intention> {
    for entry_name in [destination, "*"] {
        let Some(entry) = tables.config_entry(ce::SERVICE_INTENTIONS, entry_name) else {
            continue;
        };
        let typed = entry.typed();
        let Typed::Intentions(intentions) = typed.as_ref() else {
            continue;
        };
        for source_name in [source, "*"] {
            if let Some(&position) = intentions.by_name.get(source_name) {
                return Some(Intention {
                    entry: entry.clone(),
                    position,
                    precedence: precedence(source_name, entry_name),
                });
            }
        }
    }
    None
}

/// Consul's decision for a connection from `source` to `destination` when only the
/// service identities are known (`/v1/agent/connect/authorize`, `intention check`): an L7
/// intention cannot be evaluated without a request, so it denies.
pub fn decide(
    tables: &Tables,
    source: &str,
    destination: &str,
    default: DefaultPolicy,
) -> Decision {
    match matching(tables, source, destination) {
        Some(intention) if intention.is_l7() => Decision {
            allowed: false,
            reason: format!("Matched L7 intention: {}", intention.describe()),
        },
        Some(intention) => Decision {
            allowed: intention.action() == "allow",
            reason: format!("Matched L4 intention: {}", intention.describe()),
        },
        None => match default {
            DefaultPolicy::Configured { allow } => Decision {
                allowed: allow,
                reason: "Default intention policy".into(),
            },
            DefaultPolicy::Acl { allow } => Decision {
                allowed: allow,
                reason: "Default behavior configured by ACLs".into(),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Store;
    use crate::types::Command;
    use serde_json::json;

    fn write(store: &Store, index: u64, destination: &str, sources: serde_json::Value) {
        let json = json!({"Kind": "service-intentions", "Name": destination, "Sources": sources});
        let entry = crate::connect::entry::decode(json.as_object().unwrap().clone()).unwrap();
        let command = Command::ConfigEntrySet {
            entry: Box::new(entry),
            cas: None,
        };
        store.apply_batch([(index, Some(&command))]);
    }

    const ALLOW: DefaultPolicy = DefaultPolicy::Acl { allow: true };

    /// Every exact/wildcard combination: each row adds intentions and checks which one
    /// decides `web -> db`, with its precedence.
    #[test]
    fn precedence_decides_between_exact_and_wildcard_intentions() {
        // (source, destination, action) added in order; after each, the deciding intention.
        let steps = [
            (("*", "*", "deny"), ("*", "*", 5, false)),
            (("web", "*", "allow"), ("web", "*", 6, true)),
            (("*", "db", "deny"), ("*", "db", 8, false)),
            (("web", "db", "allow"), ("web", "db", 9, true)),
        ];
        let store = Store::new();
        let mut by_destination: std::collections::BTreeMap<&str, Vec<serde_json::Value>> =
            Default::default();
        for (index, ((source, destination, action), expected)) in steps.iter().enumerate() {
            by_destination
                .entry(destination)
                .or_default()
                .push(json!({"Name": source, "Action": action}));
            let sources = json!(by_destination[destination]);
            write(&store, index as u64 + 1, destination, sources);
            let tables = store.snapshot();
            let found = matching(&tables, "web", "db").expect("an intention matches");
            let (source, destination, precedence, allowed) = *expected;
            assert_eq!(found.source(), source);
            assert_eq!(found.destination(), destination);
            assert_eq!(found.precedence, precedence);
            let decision = decide(&tables, "web", "db", ALLOW);
            assert_eq!(decision.allowed, allowed, "{}", decision.reason);
            assert!(decision.reason.starts_with("Matched L4 intention: "));
            // Listing agrees with the fast path: the first listed match decides.
            let listed = match_destination(&tables, "db");
            let first = listed
                .iter()
                .find(|i| i.source() == "web" || i.source() == "*")
                .unwrap();
            assert_eq!(
                (first.source(), first.precedence),
                (found.source(), precedence)
            );
        }
        // Another source only matches the wildcards.
        let tables = store.snapshot();
        let other = matching(&tables, "api", "db").unwrap();
        assert_eq!((other.source(), other.precedence), ("*".to_string(), 8));
        // Precedence values as Consul computes them.
        assert_eq!(precedence("web", "db"), 9);
        assert_eq!(precedence("*", "db"), 8);
        assert_eq!(precedence("web", "*"), 6);
        assert_eq!(precedence("*", "*"), 5);
    }

    #[test]
    fn deny_sorts_before_allow_at_equal_precedence() {
        let store = Store::new();
        write(&store, 1, "db", json!([{"Name": "web", "Action": "allow"}]));
        write(
            &store,
            2,
            "cache",
            json!([{"Name": "web", "Action": "deny"}]),
        );
        let tables = store.snapshot();
        // Two different destinations, same precedence (9): the deny lists first.
        let mut list = match_source(&tables, "web");
        sort(&mut list);
        assert_eq!(list[0].precedence, list[1].precedence);
        assert_eq!(list[0].action(), "deny");
        assert_eq!(list[1].action(), "allow");
    }

    #[test]
    fn l7_intentions_deny_without_a_request_and_defaults_apply() {
        let store = Store::new();
        write(
            &store,
            1,
            "db",
            json!([{"Name": "web", "Permissions": [{"Action": "allow", "HTTP": {"PathPrefix": "/"}}]}]),
        );
        let tables = store.snapshot();
        let decision = decide(&tables, "web", "db", ALLOW);
        assert!(!decision.allowed);
        assert!(decision.reason.starts_with("Matched L7 intention: "));
        let default = decide(
            &tables,
            "api",
            "db",
            DefaultPolicy::Configured { allow: false },
        );
        assert_eq!(
            default,
            Decision {
                allowed: false,
                reason: "Default intention policy".into()
            }
        );
        let acl = decide(&tables, "api", "db", ALLOW);
        assert_eq!(acl.reason, "Default behavior configured by ACLs");
        assert!(acl.allowed);
    }
}
