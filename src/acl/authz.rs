//! A token's policies compiled into one authorizer: merged as Consul merges them, then laid
//! out per resource as a byte trie so a check costs the length of the name, however many
//! rules the token has.
//!
//! Architecture invariant: this module decides `Allow`, `Deny` or `Default` from rules alone;
//! it knows nothing of tokens, caching or HTTP. [`allows`] is the root of the chain, where
//! `Default` meets `acl.default_policy`.

use std::collections::btree_map;
use std::fmt;

use super::rules::{Disposition, Grant, MatchKind, Resource, Rules};
use super::{Access, Decision, DefaultPolicy};

/// The access level a check needs, which a rule's disposition grants or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Need {
    Read,
    List,
    Write,
}

/// Consul's `enforce`: write grants everything, list grants read and list, read grants read.
fn enforce(rule: Disposition, need: Need) -> Decision {
    let granted = match rule {
        Disposition::Write => true,
        Disposition::List => need != Need::Write,
        Disposition::Read => need == Need::Read,
        Disposition::Deny => false,
    };
    if granted {
        Decision::Allow
    } else {
        Decision::Deny
    }
}

fn enforce_optional(rule: Option<Disposition>, need: Need) -> Decision {
    rule.map_or(Decision::Default, |rule| enforce(rule, need))
}

#[derive(Clone, Debug, Default)]
struct TrieNode {
    /// Sorted by byte; names are short and fan-out small, so binary search over a Vec beats
    /// a map in both memory and speed.
    children: Vec<(u8, usize)>,
    exact: Option<Disposition>,
    prefix: Option<Disposition>,
    /// No rule in this node's subtree (its own included) grants less than write: the
    /// "within the prefix" half of `KeyWritePrefix`, answered without walking the subtree.
    subtree_all_write: bool,
}

/// One resource's rules. Node 0 is the root, the empty label; every node's children sit at
/// larger indexes than it, which lets `finish` fill in subtree facts in one reverse pass.
#[derive(Clone, Debug)]
struct RuleTree {
    nodes: Vec<TrieNode>,
}

impl RuleTree {
    fn new() -> RuleTree {
        RuleTree {
            nodes: vec![TrieNode::default()],
        }
    }

    fn child(&self, node: usize, byte: u8) -> Option<usize> {
        let children = &self.nodes[node].children;
        let found = children.binary_search_by_key(&byte, |&(child_byte, _)| child_byte);
        found.ok().map(|index| children[index].1)
    }

    /// Inserts an already-merged rule; a later insert for the same label and kind replaces.
    fn insert(&mut self, label: &str, kind: MatchKind, rule: Disposition) {
        let mut node = 0;
        for byte in label.bytes() {
            node = match self.nodes[node]
                .children
                .binary_search_by_key(&byte, |&(b, _)| b)
            {
                Ok(index) => self.nodes[node].children[index].1,
                Err(index) => {
                    let created = self.nodes.len();
                    self.nodes.push(TrieNode::default());
                    self.nodes[node].children.insert(index, (byte, created));
                    created
                }
            };
        }
        match kind {
            MatchKind::Exact => self.nodes[node].exact = Some(rule),
            MatchKind::Prefix => self.nodes[node].prefix = Some(rule),
        }
    }

    fn finish(&mut self) {
        for index in (0..self.nodes.len()).rev() {
            let node = &self.nodes[index];
            let own = [node.exact, node.prefix]
                .into_iter()
                .flatten()
                .all(|rule| rule == Disposition::Write);
            let children = node
                .children
                .iter()
                .all(|&(_, child)| self.nodes[child].subtree_all_write);
            self.nodes[index].subtree_all_write = own && children;
        }
    }

    /// Consul's `getPolicy`: the longest prefix rule along the name, unless the node for the
    /// whole name has an exact rule, which wins whatever it says.
    fn lookup(&self, name: &str) -> Option<Disposition> {
        let mut node = 0;
        let mut found = self.nodes[0].prefix;
        for byte in name.bytes() {
            let Some(next) = self.child(node, byte) else {
                return found;
            };
            node = next;
            found = self.nodes[node].prefix.or(found);
        }
        self.nodes[node].exact.or(found)
    }

    fn check(&self, name: &str, need: Need) -> Decision {
        enforce_optional(self.lookup(name), need)
    }

    /// Consul's `KeyWritePrefix`: Deny when the longest prefix rule at or above `prefix` is not
    /// write, or when any rule (exact or prefix) at or under `prefix` is not write; otherwise
    /// Allow when a write prefix rule covers `prefix`, else Default. Exact rules above
    /// `prefix` play no part: they name single keys outside the deleted tree.
    fn write_prefix(&self, prefix: &str) -> Decision {
        let mut node = 0;
        let mut covering = self.nodes[0].prefix;
        let mut reached = true;
        for byte in prefix.bytes() {
            match self.child(node, byte) {
                Some(next) => {
                    node = next;
                    covering = self.nodes[node].prefix.or(covering);
                }
                None => {
                    reached = false;
                    break;
                }
            }
        }
        let base = enforce_optional(covering, Need::Write);
        if base == Decision::Deny {
            return Decision::Deny;
        }
        // When the walk fell off the trie, no rule lies at or under the prefix.
        if reached && !self.nodes[node].subtree_all_write {
            return Decision::Deny;
        }
        base
    }

    fn rules(&self) -> impl Iterator<Item = Disposition> + '_ {
        self.nodes
            .iter()
            .flat_map(|node| [node.exact, node.prefix].into_iter().flatten())
    }

    /// Consul's `allAllowed`: Deny when any rule in the tree withholds `need`; otherwise Allow
    /// when a `""` prefix rule covers every name; otherwise Default, since names no rule
    /// mentions are left to the next authorizer.
    fn all_allowed(&self, need: Need) -> Decision {
        if self
            .rules()
            .any(|rule| enforce(rule, need) == Decision::Deny)
        {
            return Decision::Deny;
        }
        enforce_optional(self.nodes[0].prefix, need)
    }

    /// Consul's `anyAllowed`: Allow when any rule grants `need`; otherwise Deny when a `""`
    /// prefix rule withholds it from every name no other rule mentions; otherwise Default.
    fn any_allowed(&self, need: Need) -> Decision {
        if self
            .rules()
            .any(|rule| enforce(rule, need) == Decision::Allow)
        {
            return Decision::Allow;
        }
        enforce_optional(self.nodes[0].prefix, need)
    }
}

/// A token's compiled policies. Immutable once built, so it is `Send + Sync` and meant to be
/// shared behind an `Arc` and cached per set of policies.
#[derive(Clone, Debug)]
pub struct Authz {
    acl: Option<Disposition>,
    keyring: Option<Disposition>,
    mesh: Option<Disposition>,
    operator: Option<Disposition>,
    peering: Option<Disposition>,
    agent: RuleTree,
    event: RuleTree,
    key: RuleTree,
    node: RuleTree,
    query: RuleTree,
    service: RuleTree,
    intention: RuleTree,
    session: RuleTree,
    /// The whole-tree checks do not depend on the request, so they are answered once here.
    node_read_all: Decision,
    service_read_all: Decision,
    service_write_any: Decision,
    intention_read_any: Decision,
    intention_write_all: Decision,
}

/// Merges Consul's way: where several policies name the same rule (resource, label, exact or
/// prefix, or a labelless resource) the strongest disposition wins, deny > write > list >
/// read, and service `intentions` merge separately with an unset value losing.
fn merge<'a>(policies: impl IntoIterator<Item = &'a Rules>) -> Rules {
    let mut merged = Rules::default();
    for rules in policies {
        merged.acl = Disposition::strongest_of(merged.acl, rules.acl);
        merged.keyring = Disposition::strongest_of(merged.keyring, rules.keyring);
        merged.mesh = Disposition::strongest_of(merged.mesh, rules.mesh);
        merged.operator = Disposition::strongest_of(merged.operator, rules.operator);
        merged.peering = Disposition::strongest_of(merged.peering, rules.peering);
        for (key, grant) in &rules.labeled {
            match merged.labeled.entry(key.clone()) {
                btree_map::Entry::Vacant(slot) => {
                    slot.insert(*grant);
                }
                btree_map::Entry::Occupied(mut slot) => {
                    let existing = slot.get_mut();
                    existing.policy = existing.policy.strongest(grant.policy);
                    existing.intentions =
                        Disposition::strongest_of(existing.intentions, grant.intentions);
                }
            }
        }
    }
    merged
}

/// A service rule's intentions: as written, else read for read/write services and deny for
/// denied ones. Applied after merging, as Consul does.
fn intentions_of(grant: &Grant) -> Disposition {
    grant.intentions.unwrap_or(match grant.policy {
        Disposition::Deny => Disposition::Deny,
        _ => Disposition::Read,
    })
}

impl Authz {
    /// Compiles a token's policies (direct, from roles, and synthetic ones from identities) into
    /// one authorizer.
    pub fn compile<'a>(policies: impl IntoIterator<Item = &'a Rules>) -> Authz {
        let merged = merge(policies);
        let mut agent = RuleTree::new();
        let mut event = RuleTree::new();
        let mut key = RuleTree::new();
        let mut node = RuleTree::new();
        let mut query = RuleTree::new();
        let mut service = RuleTree::new();
        let mut intention = RuleTree::new();
        let mut session = RuleTree::new();
        for (rule, grant) in &merged.labeled {
            let tree = match rule.resource {
                Resource::Agent => &mut agent,
                Resource::Event => &mut event,
                Resource::Key => &mut key,
                Resource::Node => &mut node,
                Resource::Query => &mut query,
                Resource::Service => {
                    intention.insert(&rule.label, rule.kind, intentions_of(grant));
                    &mut service
                }
                Resource::Session => &mut session,
            };
            tree.insert(&rule.label, rule.kind, grant.policy);
        }
        for tree in [
            &mut agent,
            &mut event,
            &mut key,
            &mut node,
            &mut query,
            &mut service,
            &mut intention,
            &mut session,
        ] {
            tree.finish();
        }
        Authz {
            acl: merged.acl,
            keyring: merged.keyring,
            mesh: merged.mesh,
            operator: merged.operator,
            peering: merged.peering,
            node_read_all: node.all_allowed(Need::Read),
            service_read_all: service.all_allowed(Need::Read),
            service_write_any: service.any_allowed(Need::Write),
            intention_read_any: intention.any_allowed(Need::Read),
            intention_write_all: intention.all_allowed(Need::Write),
            agent,
            event,
            key,
            node,
            query,
            service,
            intention,
            session,
        }
    }

    /// What these policies say about `access`; `Default` when they say nothing.
    pub fn decide(&self, access: Access<'_>) -> Decision {
        match access {
            Access::AclRead => enforce_optional(self.acl, Need::Read),
            Access::AclWrite => enforce_optional(self.acl, Need::Write),
            Access::AgentRead(node) => self.agent.check(node, Need::Read),
            Access::AgentWrite(node) => self.agent.check(node, Need::Write),
            Access::EventRead(name) => self.event.check(name, Need::Read),
            Access::EventWrite(name) => self.event.check(name, Need::Write),
            Access::KeyRead(key) => self.key.check(key, Need::Read),
            Access::KeyList(prefix) => self.key.check(prefix, Need::List),
            Access::KeyWrite(key) => self.key.check(key, Need::Write),
            Access::KeyWritePrefix(prefix) => self.key.write_prefix(prefix),
            Access::KeyringRead => enforce_optional(self.keyring, Need::Read),
            Access::KeyringWrite => enforce_optional(self.keyring, Need::Write),
            // Mesh and peering predate their own rules; without one, operator decides.
            Access::MeshRead => enforce_optional(self.mesh.or(self.operator), Need::Read),
            Access::MeshWrite => enforce_optional(self.mesh.or(self.operator), Need::Write),
            Access::PeeringRead => enforce_optional(self.peering.or(self.operator), Need::Read),
            Access::PeeringWrite => enforce_optional(self.peering.or(self.operator), Need::Write),
            Access::NodeRead(name) => self.node.check(name, Need::Read),
            Access::NodeReadAll => self.node_read_all,
            Access::NodeWrite(name) => self.node.check(name, Need::Write),
            Access::OperatorRead => enforce_optional(self.operator, Need::Read),
            Access::OperatorWrite => enforce_optional(self.operator, Need::Write),
            Access::QueryRead(name) => self.query.check(name, Need::Read),
            Access::QueryWrite(name) => self.query.check(name, Need::Write),
            Access::ServiceRead(name) => self.service.check(name, Need::Read),
            Access::ServiceReadAll => self.service_read_all,
            Access::ServiceWrite(name) => self.service.check(name, Need::Write),
            Access::ServiceWriteAny => self.service_write_any,
            Access::IntentionRead("*") => self.intention_read_any,
            Access::IntentionRead(name) => self.intention.check(name, Need::Read),
            Access::IntentionWrite("*") => self.intention_write_all,
            Access::IntentionWrite(name) => self.intention.check(name, Need::Write),
            Access::SessionRead(node) => self.session.check(node, Need::Read),
            Access::SessionWrite(node) => self.session.check(node, Need::Write),
        }
    }
}

/// The root of the chain: an `Allow` or `Deny` stands; `Default` falls to the ACL default
/// policy, where `allow` still withholds ACL reads and writes (and so snapshots), because a
/// token nobody granted `acl` rules must not be able to mint itself new ones.
pub fn allows(decision: Decision, access: Access<'_>, default: DefaultPolicy) -> bool {
    match decision {
        Decision::Allow => true,
        Decision::Deny => false,
        Decision::Default => match default {
            DefaultPolicy::Deny => false,
            DefaultPolicy::Allow => !matches!(access, Access::AclRead | Access::AclWrite),
        },
    }
}

/// The permission a check needs, in the words of Consul's denial messages:
/// `'key:write' on "app/config"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Permission<'a> {
    pub resource: &'static str,
    pub level: &'static str,
    /// The name checked; `None` for labelless resources, whole-tree checks and `""`, which
    /// Consul's message leaves out.
    pub label: Option<&'a str>,
}

impl fmt::Display for Permission<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "'{}:{}'", self.resource, self.level)?;
        if let Some(label) = self.label {
            write!(formatter, " on {label:?}")?;
        }
        Ok(())
    }
}

/// The resource word, level and name Consul's denial message gives for `access`.
pub fn permission(access: Access<'_>) -> Permission<'_> {
    let (resource, level, label) = match access {
        Access::AclRead => ("acl", "read", None),
        Access::AclWrite => ("acl", "write", None),
        Access::AgentRead(node) => ("agent", "read", Some(node)),
        Access::AgentWrite(node) => ("agent", "write", Some(node)),
        Access::EventRead(name) => ("event", "read", Some(name)),
        Access::EventWrite(name) => ("event", "write", Some(name)),
        Access::KeyRead(key) => ("key", "read", Some(key)),
        Access::KeyList(prefix) => ("key", "list", Some(prefix)),
        Access::KeyWrite(key) => ("key", "write", Some(key)),
        Access::KeyWritePrefix(prefix) => ("key", "write", Some(prefix)),
        Access::KeyringRead => ("keyring", "read", None),
        Access::KeyringWrite => ("keyring", "write", None),
        Access::MeshRead => ("mesh", "read", None),
        Access::MeshWrite => ("mesh", "write", None),
        Access::NodeRead(name) => ("node", "read", Some(name)),
        Access::NodeReadAll => ("node", "read", None),
        Access::NodeWrite(name) => ("node", "write", Some(name)),
        Access::OperatorRead => ("operator", "read", None),
        Access::OperatorWrite => ("operator", "write", None),
        Access::PeeringRead => ("peering", "read", None),
        Access::PeeringWrite => ("peering", "write", None),
        Access::QueryRead(name) => ("query", "read", Some(name)),
        Access::QueryWrite(name) => ("query", "write", Some(name)),
        Access::ServiceRead(name) => ("service", "read", Some(name)),
        Access::ServiceReadAll => ("service", "read", None),
        Access::ServiceWrite(name) => ("service", "write", Some(name)),
        Access::ServiceWriteAny => ("service", "write", None),
        Access::IntentionRead(name) => ("intention", "read", Some(name)),
        Access::IntentionWrite(name) => ("intention", "write", Some(name)),
        Access::SessionRead(node) => ("session", "read", Some(node)),
        Access::SessionWrite(node) => ("session", "write", Some(node)),
    };
    Permission {
        resource,
        level,
        label: label.filter(|label| !label.is_empty()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::rules::parse;
    use Decision::{Allow, Default, Deny};

    fn authz(texts: &[&str]) -> Authz {
        let policies: Vec<Rules> = texts
            .iter()
            .map(|text| parse(text).unwrap_or_else(|error| panic!("{text}: {error}")))
            .collect();
        Authz::compile(&policies)
    }

    fn assert_decisions(authz: &Authz, cases: &[(Access<'_>, Decision)]) {
        for &(access, expected) in cases {
            assert_eq!(authz.decide(access), expected, "{access:?}");
        }
    }

    /// Every variant once, so a new variant cannot slip past the whole-policy tests.
    fn every_access() -> Vec<Access<'static>> {
        vec![
            Access::AclRead,
            Access::AclWrite,
            Access::AgentRead("n1"),
            Access::AgentWrite("n1"),
            Access::EventRead("deploy"),
            Access::EventWrite("deploy"),
            Access::KeyRead("app/config"),
            Access::KeyList("app/"),
            Access::KeyWrite("app/config"),
            Access::KeyWritePrefix("app/"),
            Access::KeyringRead,
            Access::KeyringWrite,
            Access::MeshRead,
            Access::MeshWrite,
            Access::NodeRead("n1"),
            Access::NodeReadAll,
            Access::NodeWrite("n1"),
            Access::OperatorRead,
            Access::OperatorWrite,
            Access::PeeringRead,
            Access::PeeringWrite,
            Access::QueryRead("q"),
            Access::QueryWrite("q"),
            Access::ServiceRead("web"),
            Access::ServiceReadAll,
            Access::ServiceWrite("web"),
            Access::ServiceWriteAny,
            Access::IntentionRead("web"),
            Access::IntentionRead("*"),
            Access::IntentionWrite("web"),
            Access::IntentionWrite("*"),
            Access::SessionRead("n1"),
            Access::SessionWrite("n1"),
        ]
    }

    #[test]
    fn reference_example() {
        let authz = authz(&[r#"
            key_prefix "foo/" { policy = "write" }
            key "foo/bar" { policy = "read" }
            key_prefix "foo/bar" { policy = "deny" }
        "#]);
        assert_decisions(
            &authz,
            &[
                (Access::KeyRead("foo/bar"), Allow),
                (Access::KeyWrite("foo/bar"), Deny),
                (Access::KeyRead("foo/barx"), Deny),
                (Access::KeyWrite("foo/baz"), Allow),
                (Access::KeyRead("zzz"), Default),
                (Access::KeyRead("foo"), Default),
                (Access::KeyRead("foo/"), Allow),
            ],
        );
    }

    #[test]
    fn exact_beats_prefix_only_for_the_whole_name() {
        let authz = authz(&[r#"
            key_prefix "" { policy = "deny" }
            key "open" { policy = "write" }
            key "" { policy = "read" }
            service_prefix "web" { policy = "write" }
            service "web" { policy = "deny" }
        "#]);
        assert_decisions(
            &authz,
            &[
                (Access::KeyWrite("open"), Allow),
                (Access::KeyRead("opener"), Deny),
                (Access::KeyRead("ope"), Deny),
                (Access::KeyRead(""), Allow),
                (Access::KeyWrite(""), Deny),
                (Access::ServiceRead("web"), Deny),
                (Access::ServiceWrite("web-2"), Allow),
                (Access::ServiceRead("we"), Default),
            ],
        );
    }

    #[test]
    fn longest_prefix_wins() {
        let authz = authz(&[r#"
            node_prefix "" { policy = "read" }
            node_prefix "db-" { policy = "write" }
            node_prefix "db-prod-" { policy = "deny" }
        "#]);
        assert_decisions(
            &authz,
            &[
                (Access::NodeRead("web-1"), Allow),
                (Access::NodeWrite("web-1"), Deny),
                (Access::NodeWrite("db-1"), Allow),
                (Access::NodeRead("db-prod-1"), Deny),
                (Access::NodeWrite("db-prod"), Allow),
            ],
        );
    }

    #[test]
    fn deny_takes_precedence_across_policies() {
        let authz = authz(&[
            r#"key_prefix "app/" { policy = "write" }
               service "web" { policy = "read" }
               acl = "write"
               operator = "deny""#,
            r#"key_prefix "app/" { policy = "deny" }
               service "web" { policy = "write" }
               acl = "read"
               operator = "write""#,
            r#"key_prefix "app/" { policy = "list" }"#,
        ]);
        assert_decisions(
            &authz,
            &[
                (Access::KeyRead("app/x"), Deny),
                (Access::ServiceWrite("web"), Allow),
                (Access::AclWrite, Allow),
                (Access::OperatorRead, Deny),
            ],
        );
        let list_over_read = authz_pair(
            r#"key_prefix "" { policy = "read" }"#,
            r#"key_prefix "" { policy = "list" }"#,
        );
        assert_eq!(list_over_read.decide(Access::KeyList("a")), Allow);
        assert_eq!(list_over_read.decide(Access::KeyWrite("a")), Deny);
    }

    fn authz_pair(first: &str, second: &str) -> Authz {
        authz(&[first, second])
    }

    #[test]
    fn list_on_keys() {
        let authz = authz(&[r#"
            key_prefix "" { policy = "list" }
            key_prefix "read-only/" { policy = "read" }
        "#]);
        assert_decisions(
            &authz,
            &[
                (Access::KeyList("a/"), Allow),
                (Access::KeyRead("a/b"), Allow),
                (Access::KeyWrite("a/b"), Deny),
                (Access::KeyList("read-only/x"), Deny),
                (Access::KeyRead("read-only/x"), Allow),
            ],
        );
    }

    #[test]
    fn key_write_prefix() {
        let nested = authz(&[r#"
            key_prefix "foo/" { policy = "write" }
            key "foo/bar/baz" { policy = "read" }
        "#]);
        assert_decisions(
            &nested,
            &[
                (Access::KeyWritePrefix("foo/"), Deny),
                (Access::KeyWritePrefix("foo/bar"), Deny),
                (Access::KeyWritePrefix("foo/bar/baz"), Deny),
                (Access::KeyWritePrefix("foo/other"), Allow),
                (Access::KeyWritePrefix("foo/bar/baz/deeper"), Allow),
                (Access::KeyWritePrefix("elsewhere"), Default),
                (Access::KeyWritePrefix(""), Deny),
            ],
        );
        let covering_read = authz(&[r#"
            key_prefix "" { policy = "read" }
            key_prefix "team/" { policy = "write" }
            key "team" { policy = "deny" }
        "#]);
        assert_decisions(
            &covering_read,
            &[
                (Access::KeyWritePrefix("other/"), Deny),
                (Access::KeyWritePrefix("team/"), Allow),
                // An exact rule above the prefix names one key outside the deleted tree.
                (Access::KeyWritePrefix("team/x"), Allow),
            ],
        );
        let only_nested_write = authz(&[r#"key "a/b" { policy = "write" }"#]);
        assert_eq!(
            only_nested_write.decide(Access::KeyWritePrefix("a/")),
            Default
        );
        let all_write = authz(&[r#"key_prefix "" { policy = "write" }"#]);
        assert_eq!(all_write.decide(Access::KeyWritePrefix("")), Allow);
    }

    #[test]
    fn default_policy_allow_still_denies_acl() {
        let empty = Authz::compile([]);
        for access in every_access() {
            assert_eq!(empty.decide(access), Default, "{access:?}");
            let acl = matches!(access, Access::AclRead | Access::AclWrite);
            assert_eq!(
                allows(Default, access, DefaultPolicy::Allow),
                !acl,
                "{access:?}"
            );
            assert!(!allows(Default, access, DefaultPolicy::Deny), "{access:?}");
            assert!(allows(Allow, access, DefaultPolicy::Deny), "{access:?}");
            assert!(!allows(Deny, access, DefaultPolicy::Allow), "{access:?}");
        }
        let empty_text = authz(&["", "   "]);
        assert_eq!(empty_text.decide(Access::AclRead), Default);
    }

    #[test]
    fn mesh_and_peering_fall_back_to_operator() {
        let operator_write = authz(&[r#"operator = "write""#]);
        assert_decisions(
            &operator_write,
            &[
                (Access::MeshWrite, Allow),
                (Access::PeeringRead, Allow),
                (Access::PeeringWrite, Allow),
            ],
        );
        let own_rules = authz(&[r#"operator = "read" mesh = "write" peering = "deny""#]);
        assert_decisions(
            &own_rules,
            &[
                (Access::MeshWrite, Allow),
                (Access::OperatorWrite, Deny),
                (Access::PeeringRead, Deny),
            ],
        );
        let mesh_only = authz(&[r#"mesh = "read""#]);
        assert_decisions(
            &mesh_only,
            &[
                (Access::MeshRead, Allow),
                (Access::MeshWrite, Deny),
                (Access::PeeringRead, Default),
                (Access::OperatorRead, Default),
            ],
        );
    }

    #[test]
    fn service_intentions_default_from_policy() {
        let authz = authz(&[r#"
            service "web" { policy = "write" }
            service "db" { policy = "deny" }
            service "api" { policy = "read" intentions = "write" }
            service_prefix "batch-" { policy = "read" intentions = "deny" }
        "#]);
        assert_decisions(
            &authz,
            &[
                (Access::IntentionRead("web"), Allow),
                (Access::IntentionWrite("web"), Deny),
                (Access::IntentionRead("db"), Deny),
                (Access::IntentionWrite("api"), Allow),
                (Access::ServiceWrite("api"), Deny),
                (Access::IntentionRead("batch-1"), Deny),
                (Access::ServiceRead("batch-1"), Allow),
                (Access::IntentionRead("other"), Default),
            ],
        );
    }

    #[test]
    fn intentions_merge_before_their_default_is_filled_in() {
        // Consul merges the written values, so an unset intentions loses to a set one even
        // when its policy would have implied deny.
        let authz = authz_pair(
            r#"service "web" { policy = "deny" }"#,
            r#"service "web" { policy = "read" intentions = "write" }"#,
        );
        assert_eq!(authz.decide(Access::ServiceRead("web")), Deny);
        assert_eq!(authz.decide(Access::IntentionWrite("web")), Allow);
    }

    #[test]
    fn wildcard_intention_checks() {
        let read_one = authz(&[r#"service "web" { policy = "read" }"#]);
        assert_eq!(read_one.decide(Access::IntentionRead("*")), Allow);
        assert_eq!(read_one.decide(Access::IntentionWrite("*")), Deny);

        let denied_everywhere = authz(&[r#"service_prefix "" { policy = "deny" }"#]);
        assert_eq!(denied_everywhere.decide(Access::IntentionRead("*")), Deny);

        let write_all = authz(&[r#"service_prefix "" { policy = "write" intentions = "write" }"#]);
        assert_eq!(write_all.decide(Access::IntentionWrite("*")), Allow);

        let write_all_but_one = authz(&[r#"
            service_prefix "" { policy = "write" intentions = "write" }
            service "legacy" { policy = "read" }
        "#]);
        assert_eq!(write_all_but_one.decide(Access::IntentionWrite("*")), Deny);

        // Write on one service is not write on every service: names without a rule are
        // left to the default policy.
        let write_one = authz(&[r#"service "web" { policy = "write" intentions = "write" }"#]);
        assert_eq!(write_one.decide(Access::IntentionWrite("*")), Default);
        assert_eq!(
            Authz::compile([]).decide(Access::IntentionRead("*")),
            Default
        );
    }

    #[test]
    fn whole_tree_reads() {
        let cases = [
            ("", Default),
            (r#"service_prefix "" { policy = "read" }"#, Allow),
            (r#"service_prefix "" { policy = "write" }"#, Allow),
            (r#"service_prefix "" { policy = "deny" }"#, Deny),
            (r#"service "web" { policy = "read" }"#, Default),
            (
                r#"service_prefix "" { policy = "read" }
                   service "secret" { policy = "deny" }"#,
                Deny,
            ),
            (
                r#"service_prefix "" { policy = "write" }
                   service_prefix "internal-" { policy = "deny" }"#,
                Deny,
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(
                authz(&[text]).decide(Access::ServiceReadAll),
                expected,
                "{text}"
            );
            let as_nodes = text.replace("service", "node");
            assert_eq!(
                authz(&[&as_nodes]).decide(Access::NodeReadAll),
                expected,
                "{as_nodes}"
            );
        }
    }

    #[test]
    fn service_write_any() {
        assert_eq!(
            Authz::compile([&Rules::service_identity("web")]).decide(Access::ServiceWriteAny),
            Allow
        );
        // A catch-all rule without write answers for every service no other rule names.
        assert_eq!(
            Authz::compile([&Rules::dns()]).decide(Access::ServiceWriteAny),
            Deny
        );
        assert_eq!(Authz::compile([]).decide(Access::ServiceWriteAny), Default);
        let read_one = authz(&[r#"service "web" { policy = "read" }"#]);
        assert_eq!(read_one.decide(Access::ServiceWriteAny), Default);
    }

    #[test]
    fn labelled_resources_use_their_own_trees() {
        let authz = authz(&[r#"
            agent "n1" { policy = "write" }
            session_prefix "" { policy = "read" }
            event_prefix "deploy-" { policy = "write" }
            query "q" { policy = "read" }
            keyring = "read"
            acl = "read"
        "#]);
        assert_decisions(
            &authz,
            &[
                (Access::AgentWrite("n1"), Allow),
                (Access::AgentRead("n2"), Default),
                (Access::NodeRead("n1"), Default),
                (Access::SessionRead("n1"), Allow),
                (Access::SessionWrite("n1"), Deny),
                (Access::EventWrite("deploy-web"), Allow),
                (Access::EventRead("other"), Default),
                (Access::QueryRead("q"), Allow),
                (Access::QueryWrite("q"), Deny),
                (Access::QueryRead("q2"), Default),
                (Access::KeyringRead, Allow),
                (Access::KeyringWrite, Deny),
                (Access::AclRead, Allow),
                (Access::AclWrite, Deny),
            ],
        );
    }

    #[test]
    fn global_management_allows_everything() {
        let management = Authz::compile([&Rules::global_management()]);
        let read_only = Authz::compile([&Rules::global_read_only()]);
        for access in every_access() {
            assert_eq!(management.decide(access), Allow, "{access:?}");
            // Read does not grant list, so read-only cannot list keys either.
            let expected = if permission(access).level == "read" {
                Allow
            } else {
                Deny
            };
            assert_eq!(read_only.decide(access), expected, "{access:?}");
        }
        assert!(allows(
            management.decide(Access::AclWrite),
            Access::AclWrite,
            DefaultPolicy::Deny
        ));
    }

    #[test]
    fn service_identity_grants_its_service_and_sidecar() {
        let authz = Authz::compile([&Rules::service_identity("web")]);
        assert_decisions(
            &authz,
            &[
                (Access::ServiceWrite("web"), Allow),
                (Access::ServiceWrite("web-sidecar-proxy"), Allow),
                (Access::ServiceWrite("db"), Deny),
                (Access::ServiceRead("db"), Allow),
                (Access::NodeRead("n1"), Allow),
                (Access::NodeWrite("n1"), Deny),
                (Access::IntentionRead("web"), Allow),
                (Access::IntentionWrite("web"), Deny),
                (Access::KeyRead("app/config"), Default),
            ],
        );
        let key_read = Access::KeyRead("app/config");
        assert!(!allows(
            authz.decide(key_read),
            key_read,
            DefaultPolicy::Deny
        ));
        assert!(allows(
            authz.decide(key_read),
            key_read,
            DefaultPolicy::Allow
        ));

        let node = Authz::compile([&Rules::node_identity("n1")]);
        assert_eq!(node.decide(Access::NodeWrite("n1")), Allow);
        assert_eq!(node.decide(Access::NodeWrite("n2")), Default);
        assert_eq!(node.decide(Access::ServiceRead("web")), Allow);
    }

    #[test]
    fn many_policies_compile_and_look_up() {
        let dispositions = ["read", "write", "deny", "list"];
        let texts: Vec<String> = (0..100)
            .map(|policy| {
                (0..20)
                    .map(|rule| {
                        let disposition = dispositions[(policy + rule) % dispositions.len()];
                        format!("key_prefix \"team-{policy}/r{rule}/\" {{ policy = \"{disposition}\" }}\nservice \"svc-{policy}-{rule}\" {{ policy = \"{}\" }}\n", if disposition == "list" { "read" } else { disposition })
                    })
                    .collect()
            })
            .collect();
        let policies: Vec<Rules> = texts
            .iter()
            .map(|text| parse(text).expect("generated rules parse"))
            .collect();
        let authz = Authz::compile(&policies);
        for policy in 0..100 {
            for rule in 0..20 {
                let disposition = dispositions[(policy + rule) % dispositions.len()];
                let key = format!("team-{policy}/r{rule}/deep/key");
                let expected_write = if disposition == "write" { Allow } else { Deny };
                assert_eq!(
                    authz.decide(Access::KeyWrite(&key)),
                    expected_write,
                    "{key}"
                );
                let expected_read = if disposition == "deny" { Deny } else { Allow };
                assert_eq!(authz.decide(Access::KeyRead(&key)), expected_read, "{key}");
                let service = format!("svc-{policy}-{rule}");
                assert_eq!(
                    authz.decide(Access::ServiceRead(&service)),
                    expected_read,
                    "{service}"
                );
            }
            let outside = format!("team-{policy}/r20/");
            assert_eq!(
                authz.decide(Access::KeyRead(&outside)),
                Default,
                "{outside}"
            );
        }
        assert_eq!(authz.decide(Access::ServiceReadAll), Deny);
        assert_eq!(authz.decide(Access::ServiceWriteAny), Allow);
    }

    #[test]
    fn authz_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Authz>();
    }

    #[test]
    fn permission_words() {
        let cases = [
            (
                Access::KeyWrite("app/config"),
                "'key:write' on \"app/config\"",
            ),
            (Access::KeyWritePrefix("app/"), "'key:write' on \"app/\""),
            (Access::KeyWritePrefix(""), "'key:write'"),
            (Access::KeyList("app/"), "'key:list' on \"app/\""),
            (Access::ServiceRead("web"), "'service:read' on \"web\""),
            (Access::ServiceReadAll, "'service:read'"),
            (Access::NodeReadAll, "'node:read'"),
            (Access::ServiceWriteAny, "'service:write'"),
            (Access::OperatorRead, "'operator:read'"),
            (Access::MeshWrite, "'mesh:write'"),
            (Access::PeeringRead, "'peering:read'"),
            (Access::AclWrite, "'acl:write'"),
            (Access::KeyringRead, "'keyring:read'"),
            (
                Access::IntentionWrite("web"),
                "'intention:write' on \"web\"",
            ),
            (Access::SessionWrite("n1"), "'session:write' on \"n1\""),
            (Access::AgentRead("n1"), "'agent:read' on \"n1\""),
            (Access::EventWrite("deploy"), "'event:write' on \"deploy\""),
            (Access::QueryRead("q"), "'query:read' on \"q\""),
        ];
        for (access, expected) in cases {
            assert_eq!(permission(access).to_string(), expected, "{access:?}");
        }
        let words = [
            "acl",
            "agent",
            "event",
            "intention",
            "key",
            "keyring",
            "node",
            "operator",
            "mesh",
            "query",
            "service",
            "session",
            "peering",
        ];
        for access in every_access() {
            let permission = permission(access);
            assert!(words.contains(&permission.resource), "{access:?}");
            assert!(
                ["read", "write", "list"].contains(&permission.level),
                "{access:?}"
            );
        }
    }
}
