//! The rules a config-entry change must keep across entries, checked before the change is
//! proposed: against the tables as they would be after it (`Tables::proposed`, the FSM's own
//! code), for writes and deletions alike.
//!
//! - Routers, splitters and intentions with L7 permissions need an HTTP-family protocol, so a
//!   protocol may not be lowered (a service-defaults or proxy-defaults written or deleted)
//!   under one of them.
//! - Every discovery chain that compiles now still compiles after the change, and the changed
//!   entry's own chain compiles. Chains refer across services (a splitter to another
//!   service's subset, a redirect), so every chain is compiled, not only the changed
//!   service's: deleting `api`'s resolver must not strand `web`'s splitter on `api`'s
//!   subsets, which would leave every proxy of `web` on its old configuration.
//!
//! The FSM decides only the compare-and-set, so a concurrent change to another entry can still
//! race with this check (accepted until writes are forwarded to one leader-side validator).

use std::collections::BTreeSet;

use super::chain::{self, Context, Overrides};
use super::entry::{is_http_family, service_protocol, EntryError};
use crate::state::Tables;
use crate::types::config_entry::{self as ce, Typed};
use crate::types::Command;

/// The kinds a discovery chain reads.
const CHAIN_KINDS: [&str; 5] = [
    ce::SERVICE_DEFAULTS,
    ce::PROXY_DEFAULTS,
    ce::SERVICE_ROUTER,
    ce::SERVICE_SPLITTER,
    ce::SERVICE_RESOLVER,
];

/// Checks `change` (a `ConfigEntrySet` or `ConfigEntryDelete`) against the entries in
/// `tables`; the error is Consul's message for the first rule broken.
pub fn validate_change(tables: &Tables, change: &Command) -> Result<(), EntryError> {
    let (kind, name) = match change {
        Command::ConfigEntrySet { entry, .. } => (entry.kind.as_str(), entry.name.as_str()),
        Command::ConfigEntryDelete { kind, name, .. } => (kind.as_str(), name.as_str()),
        _ => return Ok(()),
    };
    let (after, _) = tables.proposed(change);
    for (l7_kind, service) in l7_entries(&after) {
        let protocol = service_protocol(&after, &service);
        if is_http_family(&protocol) {
            continue;
        }
        let changed = l7_kind == kind && service == name;
        // A violation the change did not make (data from before these rules) does not
        // block unrelated changes.
        if !changed && !is_http_family(&service_protocol(tables, &service)) {
            continue;
        }
        let what = match (changed, l7_kind) {
            (true, ce::SERVICE_INTENTIONS) => "service-intentions with Permissions".to_string(),
            (true, _) => l7_kind.to_string(),
            (false, _) => format!("existing {l7_kind} {service:?}"),
        };
        return Err(EntryError::new(format!(
            "{what}: discovery chain {service:?} uses a protocol {protocol:?} that does not permit advanced routing or splitting behavior; set Protocol to http, http2 or grpc in service-defaults"
        )));
    }
    if !CHAIN_KINDS.contains(&kind) {
        return Ok(());
    }
    let context = Context {
        datacenter: "dc",
        trust_domain: "validation.consul",
    };
    let overrides = Overrides::default();
    let mut services: BTreeSet<String> = BTreeSet::new();
    for chain_kind in CHAIN_KINDS {
        for entry in tables
            .config_entries_of(chain_kind)
            .chain(after.config_entries_of(chain_kind))
        {
            if chain_kind != ce::PROXY_DEFAULTS {
                services.insert(entry.name.clone());
            }
        }
    }
    for service in services {
        let Err(error) = chain::compile(&after, &service, &context, &overrides) else {
            continue;
        };
        let own = service == name && matches!(change, Command::ConfigEntrySet { .. });
        if own || chain::compile(tables, &service, &context, &overrides).is_ok() {
            return Err(EntryError::new(error.to_string()));
        }
    }
    Ok(())
}

/// Every entry that needs an HTTP-family protocol: (kind, service).
fn l7_entries(tables: &Tables) -> Vec<(&'static str, String)> {
    let mut found = Vec::new();
    for kind in [ce::SERVICE_ROUTER, ce::SERVICE_SPLITTER] {
        found.extend(
            tables
                .config_entries_of(kind)
                .map(|entry| (kind, entry.name.clone())),
        );
    }
    for entry in tables.config_entries_of(ce::SERVICE_INTENTIONS) {
        if entry.name == "*" {
            continue;
        }
        let typed = entry.typed();
        let Typed::Intentions(intentions) = typed.as_ref() else {
            continue;
        };
        let l7 = intentions
            .sources
            .iter()
            .any(|source| source.permissions.as_ref().is_some_and(|p| !p.is_empty()));
        if l7 {
            found.push((ce::SERVICE_INTENTIONS, entry.name.clone()));
        }
    }
    found
}

#[cfg(test)]
#[path = "graph_tests.rs"]
mod tests;
