//! The one authorization seam every HTTP, DNS and xDS request passes through: a request's
//! token resolved against the replicated ACL tables into an `Identity`, which answers whether
//! each access it names is allowed.
//!
//! Resolution reads the local state store (a server's own, a client's replica), so it costs no
//! round trip on any agent, and a token deleted on the servers stops working on a client as
//! soon as the client has applied the deletion. A resolved identity (its policies parsed and
//! compiled) is cached per secret until the ACL tables change.

pub mod authz;
pub mod rules;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

/// What a request is about to do: Consul's authorizer checks, one variant each. Names are
/// the resource's label (a key, a service, a node, ...); `""` where Consul passes none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access<'a> {
    AclRead,
    AclWrite,
    /// The agent on this node (the label is the agent's node name).
    AgentRead(&'a str),
    AgentWrite(&'a str),
    EventRead(&'a str),
    EventWrite(&'a str),
    KeyRead(&'a str),
    KeyList(&'a str),
    KeyWrite(&'a str),
    /// Every key under the prefix (recursive delete, txn delete-tree).
    KeyWritePrefix(&'a str),
    KeyringRead,
    KeyringWrite,
    MeshRead,
    MeshWrite,
    NodeRead(&'a str),
    /// Every node (a rule denying any node denies this).
    NodeReadAll,
    NodeWrite(&'a str),
    OperatorRead,
    OperatorWrite,
    PeeringRead,
    PeeringWrite,
    QueryRead(&'a str),
    QueryWrite(&'a str),
    ServiceRead(&'a str),
    /// Every service.
    ServiceReadAll,
    ServiceWrite(&'a str),
    /// Any one service.
    ServiceWriteAny,
    /// Intentions whose destination is this service; `"*"` is any (read) or every (write).
    IntentionRead(&'a str),
    IntentionWrite(&'a str),
    /// Sessions on this node.
    SessionRead(&'a str),
    SessionWrite(&'a str),
}

/// One authorizer's answer; `Default` defers to the next in the chain (at the end, the ACL
/// default policy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny,
    Default,
}

/// `acl.default_policy`, the root of every chain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DefaultPolicy {
    #[default]
    /// Everything not denied, except ACL reads and writes (and so snapshots).
    Allow,
    Deny,
}
impl DefaultPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            DefaultPolicy::Allow => "allow",
            DefaultPolicy::Deny => "deny",
        }
    }
}

/// The `acl` stanza. Its Debug form hides the initial management secret.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AclConfig {
    pub enabled: bool,
    pub default_policy: DefaultPolicy,
    /// What a client does when it cannot reach servers. concord's agents resolve from their
    /// local tables, so this only matters to a client that has never had them.
    pub down_policy: String,
    pub enable_key_list_policy: bool,
    pub enable_token_persistence: bool,
    /// Whether a secondary datacenter's servers replicate the primary's global tokens (its
    /// policies and roles always replicate).
    pub enable_token_replication: bool,
    /// The secret the leader makes a global-management token for (`acl.tokens.initial_management`).
    pub initial_management: Option<String>,
    pub tokens: AgentTokens,
}

impl std::fmt::Debug for AclConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AclConfig")
            .field("enabled", &self.enabled)
            .field("default_policy", &self.default_policy)
            .field("down_policy", &self.down_policy)
            .field("enable_key_list_policy", &self.enable_key_list_policy)
            .field("enable_token_persistence", &self.enable_token_persistence)
            .field("enable_token_replication", &self.enable_token_replication)
            .field(
                "initial_management",
                &self.initial_management.as_ref().map(|_| "<hidden>"),
            )
            .field("tokens", &self.tokens)
            .finish()
    }
}

/// The agent's own tokens (`acl.tokens`, `PUT /v1/agent/token/<kind>`).
#[derive(Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AgentTokens {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub default: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub agent_recovery: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub replication: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub config_file_service_registration: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub dns: Option<String>,
}

/// Secrets never reach a log line.
impl std::fmt::Debug for AgentTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |token: &Option<String>| if token.is_some() { "<hidden>" } else { "" };
        f.debug_struct("AgentTokens")
            .field("default", &set(&self.default))
            .field("agent", &set(&self.agent))
            .field("agent_recovery", &set(&self.agent_recovery))
            .field("replication", &set(&self.replication))
            .field(
                "config_file_service_registration",
                &set(&self.config_file_service_registration),
            )
            .field("dns", &set(&self.dns))
            .finish()
    }
}

impl AgentTokens {
    fn entries(self) -> [(&'static str, Option<String>); 6] {
        [
            ("default", self.default),
            ("agent", self.agent),
            ("agent_recovery", self.agent_recovery),
            ("replication", self.replication),
            (
                "config_file_service_registration",
                self.config_file_service_registration,
            ),
            ("dns", self.dns),
        ]
    }

    /// The token of a kind as `/v1/agent/token/<kind>` names it (Consul's legacy names too).
    pub fn slot(&mut self, kind: &str) -> Option<&mut Option<String>> {
        Some(match kind {
            "default" | "acl_token" => &mut self.default,
            "agent" | "acl_agent_token" => &mut self.agent,
            "agent_recovery" | "agent_master" | "acl_agent_master_token" => {
                &mut self.agent_recovery
            }
            "replication" | "acl_replication_token" => &mut self.replication,
            "config_file_service_registration" => &mut self.config_file_service_registration,
            "dns" => &mut self.dns,
            _ => return None,
        })
    }
}

/// Why a request's token gives it no access.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AclError {
    /// Consul's message, which clients match on: who lacks what, on which name.
    #[error("{0}")]
    PermissionDenied(String),
    /// An unknown, deleted or expired secret (never the anonymous token in its place).
    #[error("ACL not found")]
    NotFound,
    /// An unknown secret before the ACL system is bootstrapped.
    #[error("ACL system must be bootstrapped before making any requests that require authorization: ACL not found")]
    NotBootstrapped,
    /// `allow`, `deny` and `manage` name Consul's root authorizers, never a token.
    #[error("Cannot resolve root ACL")]
    RootToken,
}

/// Kept for the handlers that only need to know a check failed.
pub type PermissionDenied = AclError;

/// A token resolved: who it is and what its policies allow.
#[derive(Debug)]
pub struct Identity {
    /// `None` for the anonymous token and when ACLs are disabled.
    accessor: Option<String>,
    /// Unix nanoseconds past which the token no longer resolves (0 = never).
    expires_at: i64,
    /// `None` when ACLs are disabled: everything is allowed.
    authz: Option<authz::Authz>,
    default_policy: DefaultPolicy,
}

impl Identity {
    fn manage() -> Identity {
        Identity {
            accessor: None,
            expires_at: 0,
            authz: None,
            default_policy: DefaultPolicy::Allow,
        }
    }

    pub fn allows(&self, access: Access<'_>) -> bool {
        match &self.authz {
            None => true,
            Some(authz) => authz::allows(authz.decide(access), access, self.default_policy),
        }
    }

    /// Allowed, or Consul's 403 text naming the token, the permission and the name.
    pub fn check(&self, access: Access<'_>) -> Result<(), AclError> {
        if self.allows(access) {
            return Ok(());
        }
        let permission = authz::permission(access);
        let on = match &permission.label {
            Some(label) => format!(" on {label:?}"),
            None => String::new(),
        };
        let what = format!("'{}:{}'{on}", permission.resource, permission.level);
        Err(AclError::PermissionDenied(match &self.accessor {
            Some(accessor) => format!(
                "Permission denied: token with AccessorID '{accessor}' lacks permission {what}"
            ),
            None => format!(
                "Permission denied: anonymous token lacks permission {what}. The anonymous token is used implicitly when a request does not specify a token."
            ),
        }))
    }

    /// Whether results filtered for this identity say so (`X-Consul-Results-Filtered-By-ACLs`):
    /// Consul does not tell the anonymous token what it cannot see.
    pub fn reports_filtering(&self) -> bool {
        self.authz.is_some() && self.accessor.is_some()
    }

    pub fn accessor(&self) -> Option<&str> {
        self.accessor.as_deref()
    }
}

/// Where the ACL tables are read from: the agent's state store (its own or a replica).
pub type TablesSource = Arc<dyn Fn() -> Arc<crate::state::Tables> + Send + Sync>;

/// Resolved identities by secret, valid for one version of the ACL tables.
#[derive(Default)]
struct Cache {
    acl_index: u64,
    identities: HashMap<String, Arc<Identity>>,
}

/// More distinct secrets than this in one version of the tables start the cache over.
const CACHE_LIMIT: usize = 10_000;

struct Inner {
    config: AclConfig,
    datacenter: String,
    tokens: RwLock<AgentTokens>,
    tables: TablesSource,
    cache: Mutex<Cache>,
    manage: Arc<Identity>,
    /// `<data_dir>/acl-tokens.json` when `acl.enable_token_persistence` is on.
    persist: Option<std::path::PathBuf>,
}

/// Resolves tokens to identities; cheap to clone (every edge holds one).
#[derive(Clone)]
pub struct Authorizer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer")
            .field("enabled", &self.inner.config.enabled)
            .finish()
    }
}

impl Authorizer {
    pub fn new(config: AclConfig, datacenter: String, tables: TablesSource) -> Authorizer {
        Authorizer {
            inner: Arc::new(Inner {
                tokens: RwLock::new(config.tokens.clone()),
                config,
                datacenter,
                tables,
                cache: Mutex::new(Cache::default()),
                manage: Arc::new(Identity::manage()),
                persist: None,
            }),
        }
    }

    /// ACLs off: every token resolves to everything allowed (for tests and tools).
    pub fn disabled() -> Authorizer {
        Authorizer::new(
            AclConfig::default(),
            String::new(),
            Arc::new(|| Arc::new(crate::state::Tables::default())),
        )
    }

    pub fn enabled(&self) -> bool {
        self.inner.config.enabled
    }

    pub fn config(&self) -> &AclConfig {
        &self.inner.config
    }

    /// The ACL default policy, reported in `X-Consul-Default-ACL-Policy`; `allow` while ACLs
    /// are disabled.
    pub fn default_policy(&self) -> &'static str {
        match self.inner.config.enabled {
            true => self.inner.config.default_policy.as_str(),
            false => "allow",
        }
    }

    pub fn agent_tokens(&self) -> AgentTokens {
        self.inner
            .tokens
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// With `acl.enable_token_persistence`, tokens set over the API are kept in `path` (as
    /// Consul's `acl-tokens.json`) and override the config's at the next start.
    pub fn persisting_tokens(self, path: std::path::PathBuf) -> std::io::Result<Authorizer> {
        if !self.inner.config.enable_token_persistence {
            return Ok(self);
        }
        let mut tokens = self.inner.config.tokens.clone();
        match std::fs::read(&path) {
            Ok(bytes) => {
                let saved: AgentTokens = serde_json::from_slice(&bytes)
                    .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidData, error))?;
                for (kind, token) in saved.entries() {
                    if let (Some(slot), Some(token)) = (tokens.slot(kind), token) {
                        *slot = Some(token);
                    }
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
        let inner = Inner {
            config: self.inner.config.clone(),
            datacenter: self.inner.datacenter.clone(),
            tokens: RwLock::new(tokens),
            tables: self.inner.tables.clone(),
            cache: Mutex::new(Cache::default()),
            manage: self.inner.manage.clone(),
            persist: Some(path),
        };
        Ok(Authorizer {
            inner: Arc::new(inner),
        })
    }

    /// Replaces one of the agent's tokens (`None` for an unknown kind), then persists them
    /// if configured to; the error is the file's.
    pub fn set_agent_token(
        &self,
        kind: &str,
        token: Option<String>,
    ) -> Option<std::io::Result<()>> {
        let saved = {
            let mut tokens = self
                .inner
                .tokens
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            *tokens.slot(kind)? = token.filter(|token| !token.is_empty());
            tokens.clone()
        };
        let Some(path) = self.inner.persist.as_ref() else {
            return Some(Ok(()));
        };
        let text = serde_json::to_vec(&saved).unwrap_or_default();
        Some(crate::files::write_private(path, &text))
    }

    /// A request's token, or the agent's default token, or the anonymous token.
    pub fn resolve(&self, token: Option<&str>) -> Result<Arc<Identity>, AclError> {
        if !self.inner.config.enabled {
            return Ok(self.inner.manage.clone());
        }
        match token.filter(|token| !token.is_empty()) {
            Some(secret) => self.resolve_secret(secret),
            None => {
                // Read in place: this runs on every request that carries no token.
                let tokens = self
                    .inner
                    .tokens
                    .read()
                    .unwrap_or_else(PoisonError::into_inner);
                let secret = tokens
                    .default
                    .as_deref()
                    .unwrap_or(crate::types::acl::ANONYMOUS_SECRET);
                self.resolve_secret(secret)
            }
        }
    }

    /// DNS lookups: the agent's `dns` token, else its default token, else anonymous.
    pub fn resolve_dns(&self) -> Result<Arc<Identity>, AclError> {
        let tokens = self.agent_tokens();
        self.resolve(tokens.dns.as_deref().or(tokens.default.as_deref()))
    }

    /// xDS streams: the token Envoy sent, with no default-token fallback (as Consul).
    pub fn resolve_exact(&self, token: Option<&str>) -> Result<Arc<Identity>, AclError> {
        self.resolve(Some(
            token
                .filter(|token| !token.is_empty())
                .unwrap_or(crate::types::acl::ANONYMOUS_SECRET),
        ))
    }

    /// Resolves `token` and checks one access: the common case of a handler.
    pub fn authorize(&self, token: Option<&str>, access: Access<'_>) -> Result<(), AclError> {
        self.resolve(token)?.check(access)
    }

    fn resolve_secret(&self, secret: &str) -> Result<Arc<Identity>, AclError> {
        if matches!(secret, "allow" | "deny" | "manage") {
            return Err(AclError::RootToken);
        }
        let now = now_nanos();
        let tables = (self.inner.tables)();
        if tables.last_index() == 0 {
            // No state yet (a client agent that has not reached a server): nothing can be
            // resolved, so `acl.down_policy` decides.
            return Ok(self.down_identity());
        }
        {
            let mut cache = self
                .inner
                .cache
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if cache.acl_index != tables.acl_index() {
                cache.acl_index = tables.acl_index();
                cache.identities.clear();
            }
            if let Some(identity) = cache.identities.get(secret) {
                if identity.expires_at != 0 && identity.expires_at <= now {
                    return Err(AclError::NotFound);
                }
                return Ok(identity.clone());
            }
        }
        let identity = Arc::new(self.compile(&tables, secret, now)?);
        let mut cache = self
            .inner
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if cache.acl_index == tables.acl_index() {
            if cache.identities.len() >= CACHE_LIMIT {
                cache.identities.clear();
            }
            cache
                .identities
                .insert(secret.to_string(), identity.clone());
        }
        Ok(identity)
    }

    /// What a token resolves to while the ACL tables are out of reach: `allow` everything,
    /// `deny` everything, or (`extend-cache`, `async-cache`, with no cache to extend) only
    /// what the default policy allows.
    fn down_identity(&self) -> Arc<Identity> {
        match self.inner.config.down_policy.as_str() {
            "allow" => self.inner.manage.clone(),
            policy => Arc::new(Identity {
                accessor: None,
                expires_at: 0,
                authz: Some(authz::Authz::compile(std::iter::empty())),
                default_policy: match policy {
                    "deny" => DefaultPolicy::Deny,
                    _ => self.inner.config.default_policy,
                },
            }),
        }
    }

    fn compile(
        &self,
        tables: &crate::state::Tables,
        secret: &str,
        now: i64,
    ) -> Result<Identity, AclError> {
        let anonymous = secret == crate::types::acl::ANONYMOUS_SECRET;
        let token = match tables.acl_token_by_secret(secret) {
            Some(token) if !token.expired(now) => Some(token),
            Some(_) => return Err(AclError::NotFound),
            // The anonymous token before the leader has stored it: no policies of its own.
            None if anonymous => None,
            None if tables.acl_bootstrap_index() == 0 => return Err(AclError::NotBootstrapped),
            None => return Err(AclError::NotFound),
        };
        let policies = match token {
            Some(token) => self.policies_of(tables, token),
            None => Vec::new(),
        };
        Ok(Identity {
            accessor: token
                .filter(|_| !anonymous)
                .map(|token| token.accessor_id.clone()),
            expires_at: token.map_or(0, |token| token.expires_at_nanos),
            authz: Some(authz::Authz::compile(policies.iter())),
            default_policy: self.inner.config.default_policy,
        })
    }

    /// Every policy a token grants, directly, through its roles and as identities, for this
    /// datacenter. A link to a deleted policy or role grants nothing; a stored policy whose
    /// rules no longer parse (they were checked when written) grants nothing either.
    fn policies_of(
        &self,
        tables: &crate::state::Tables,
        token: &crate::types::acl::Token,
    ) -> Vec<rules::Rules> {
        let mut grants = vec![&token.grants];
        grants.extend(
            token
                .roles
                .iter()
                .filter_map(|id| tables.acl_role(id))
                .map(|role| &role.grants),
        );
        let datacenter = self.inner.datacenter.as_str();
        let here = |datacenters: &[String]| {
            datacenters.is_empty() || datacenters.iter().any(|dc| dc == datacenter)
        };
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for grant in grants {
            for id in &grant.policies {
                if !seen.insert(id.clone()) {
                    continue;
                }
                let Some(policy) = tables.acl_policy(id) else {
                    continue;
                };
                if !here(&policy.datacenters) {
                    continue;
                }
                match rules::parse(&policy.rules) {
                    Ok(parsed) => out.push(parsed),
                    Err(error) => {
                        tracing::warn!(policy = %policy.name, %error, "stored ACL policy does not parse");
                    }
                }
            }
            for identity in &grant.service_identities {
                if here(&identity.datacenters) {
                    out.push(rules::Rules::service_identity(&identity.service_name));
                }
            }
            for identity in &grant.node_identities {
                if identity.datacenter == datacenter {
                    out.push(rules::Rules::node_identity(&identity.node_name));
                }
            }
            for templated in &grant.templated_policies {
                if !here(&templated.datacenters) {
                    continue;
                }
                if let Some(parsed) = templated_rules(&templated.template_name, &templated.name) {
                    out.push(parsed);
                }
            }
        }
        out
    }
}

/// The rules of one of Consul's templated policies, `None` for a name concord does not have.
pub fn templated_rules(template: &str, name: &str) -> Option<rules::Rules> {
    match template {
        "builtin/service" => Some(rules::Rules::service_identity(name)),
        "builtin/node" => Some(rules::Rules::node_identity(name)),
        "builtin/dns" => Some(rules::Rules::dns()),
        _ => None,
    }
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_nanos()).unwrap_or(i64::MAX)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Store;
    use crate::types::acl::{AclOp, Grants, Policy, Role, ServiceIdentity, TemplatedPolicy, Token};
    use crate::types::Command;

    fn policy(id: &str, name: &str, rules: &str) -> AclOp {
        AclOp::PolicySet {
            policy: Box::new(Policy {
                id: id.into(),
                name: name.into(),
                rules: rules.into(),
                ..Policy::default()
            }),
            cas: None,
        }
    }

    fn token(secret: &str, grants: Grants, roles: Vec<String>, expires_at_nanos: i64) -> AclOp {
        AclOp::TokenSet {
            token: Box::new(Token {
                accessor_id: format!("accessor-{secret}"),
                secret_id: secret.into(),
                grants,
                roles,
                expires_at_nanos,
                ..Token::default()
            }),
            cas: None,
        }
    }

    fn apply(store: &Store, ops: Vec<AclOp>) {
        let index = store.snapshot().last_index() + 1;
        let commands: Vec<Command> = ops.into_iter().map(Command::Acl).collect();
        store.apply_batch(
            commands
                .iter()
                .enumerate()
                .map(|(offset, command)| (index + offset as u64, Some(command))),
        );
    }

    fn authorizer(store: &Arc<Store>, default_policy: DefaultPolicy) -> Authorizer {
        let source = store.clone();
        Authorizer::new(
            AclConfig {
                enabled: true,
                default_policy,
                down_policy: "extend-cache".into(),
                ..AclConfig::default()
            },
            "dc1".into(),
            Arc::new(move || source.snapshot()),
        )
    }

    fn grants(policies: &[&str]) -> Grants {
        Grants {
            policies: policies.iter().map(|id| id.to_string()).collect(),
            ..Grants::default()
        }
    }

    /// A store with a bootstrap done and a few policies, roles and tokens.
    fn store() -> Arc<Store> {
        let store = Arc::new(Store::new());
        apply(
            &store,
            vec![
                AclOp::Bootstrap {
                    token: Box::new(Token {
                        accessor_id: "root".into(),
                        secret_id: "root-secret".into(),
                        ..Token::default()
                    }),
                    reset_index: 0,
                },
                policy("p-app", "app", r#"key_prefix "app/" { policy = "read" }"#),
                policy("p-ops", "ops", r#"key_prefix "ops/" { policy = "write" }"#),
                AclOp::RoleSet {
                    role: Box::new(Role {
                        id: "r-ops".into(),
                        name: "ops".into(),
                        grants: grants(&["p-ops"]),
                        ..Role::default()
                    }),
                    cas: None,
                },
                token("app", grants(&["p-app"]), Vec::new(), 0),
                token("via-role", Grants::default(), vec!["r-ops".into()], 0),
                token("expired", grants(&["p-app"]), Vec::new(), 1),
                token(
                    "web",
                    Grants {
                        service_identities: vec![ServiceIdentity {
                            service_name: "web".into(),
                            datacenters: Vec::new(),
                        }],
                        templated_policies: vec![TemplatedPolicy {
                            template_name: "builtin/dns".into(),
                            ..TemplatedPolicy::default()
                        }],
                        ..Grants::default()
                    },
                    Vec::new(),
                    0,
                ),
            ],
        );
        store
    }

    #[test]
    fn tokens_grant_their_policies_roles_and_identities() {
        let store = store();
        let acl = authorizer(&store, DefaultPolicy::Deny);
        let app = acl.resolve(Some("app")).unwrap();
        assert!(app.allows(Access::KeyRead("app/config")));
        assert!(!app.allows(Access::KeyWrite("app/config")));
        assert_eq!(app.accessor(), Some("accessor-app"));
        let ops = acl.resolve(Some("via-role")).unwrap();
        assert!(ops.allows(Access::KeyWrite("ops/x")));
        assert!(!ops.allows(Access::KeyRead("app/config")));
        let web = acl.resolve(Some("web")).unwrap();
        assert!(web.allows(Access::ServiceWrite("web")));
        assert!(web.allows(Access::ServiceWrite("web-sidecar-proxy")));
        assert!(!web.allows(Access::ServiceWrite("db")));
        assert!(
            web.allows(Access::QueryRead("anything")),
            "builtin/dns grants query reads"
        );
        let denied = app.check(Access::KeyWrite("app/config")).unwrap_err();
        assert_eq!(
            denied.to_string(),
            "Permission denied: token with AccessorID 'accessor-app' lacks permission 'key:write' on \"app/config\""
        );
    }

    #[test]
    fn unknown_expired_and_root_secrets_are_refused_and_never_anonymous() {
        let store = store();
        let acl = authorizer(&store, DefaultPolicy::Allow);
        assert_eq!(acl.resolve(Some("nope")).unwrap_err(), AclError::NotFound);
        assert_eq!(
            acl.resolve(Some("expired")).unwrap_err(),
            AclError::NotFound
        );
        assert_eq!(
            acl.resolve(Some("manage")).unwrap_err(),
            AclError::RootToken
        );
        // No token: the anonymous token, which the allow default lets read, not manage ACLs.
        let anonymous = acl.resolve(None).unwrap();
        assert!(anonymous.allows(Access::KeyRead("x")));
        assert!(!anonymous.allows(Access::AclRead));
        assert!(!anonymous.reports_filtering());
        // Before any bootstrap, an unknown secret says the system needs one.
        let fresh = Arc::new(Store::new());
        apply(&fresh, vec![policy("p", "p", "")]);
        let acl = authorizer(&fresh, DefaultPolicy::Deny);
        assert_eq!(
            acl.resolve(Some("nope")).unwrap_err(),
            AclError::NotBootstrapped
        );
    }

    #[test]
    fn a_change_to_the_tables_takes_effect_on_the_next_resolution() {
        let store = store();
        let acl = authorizer(&store, DefaultPolicy::Deny);
        assert!(!acl
            .resolve(Some("app"))
            .unwrap()
            .allows(Access::KeyRead("ops/x")));
        apply(
            &store,
            vec![policy(
                "p-app",
                "app",
                r#"key_prefix "" { policy = "read" }"#,
            )],
        );
        assert!(acl
            .resolve(Some("app"))
            .unwrap()
            .allows(Access::KeyRead("ops/x")));
        apply(&store, vec![AclOp::PolicyDelete { id: "p-app".into() }]);
        assert!(!acl
            .resolve(Some("app"))
            .unwrap()
            .allows(Access::KeyRead("app/config")));
        apply(
            &store,
            vec![AclOp::TokenDelete {
                accessor_id: "accessor-app".into(),
            }],
        );
        assert_eq!(acl.resolve(Some("app")).unwrap_err(), AclError::NotFound);
    }

    #[test]
    fn the_default_token_stands_in_for_none_and_disabled_acls_allow_everything() {
        let store = store();
        let acl = authorizer(&store, DefaultPolicy::Deny);
        assert!(!acl.resolve(None).unwrap().allows(Access::KeyRead("app/x")));
        assert_eq!(
            acl.set_agent_token("default", Some("app".into()))
                .map(|r| r.is_ok()),
            Some(true)
        );
        assert!(acl.resolve(None).unwrap().allows(Access::KeyRead("app/x")));
        assert!(acl
            .resolve(Some(""))
            .unwrap()
            .allows(Access::KeyRead("app/x")));
        // xDS has no default-token fallback.
        assert!(!acl
            .resolve_exact(None)
            .unwrap()
            .allows(Access::KeyRead("app/x")));
        assert!(acl.set_agent_token("nonsense", None).is_none());
        let off = Authorizer::disabled();
        assert!(off
            .resolve(Some("anything"))
            .unwrap()
            .allows(Access::AclWrite));
        assert_eq!(off.default_policy(), "allow");
    }

    #[test]
    fn without_any_state_the_down_policy_decides() {
        let empty = Arc::new(Store::new());
        for (down, default, reads) in [
            ("allow", DefaultPolicy::Deny, true),
            ("deny", DefaultPolicy::Allow, false),
            ("extend-cache", DefaultPolicy::Allow, true),
            ("extend-cache", DefaultPolicy::Deny, false),
        ] {
            let source = empty.clone();
            let acl = Authorizer::new(
                AclConfig {
                    enabled: true,
                    default_policy: default,
                    down_policy: down.into(),
                    ..AclConfig::default()
                },
                "dc1".into(),
                Arc::new(move || source.snapshot()),
            );
            let identity = acl.resolve(Some("whatever")).unwrap();
            assert_eq!(identity.allows(Access::KeyRead("k")), reads, "{down}");
        }
    }

    #[test]
    fn agent_tokens_persist_to_a_private_file_and_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acl-tokens.json");
        let config = AclConfig {
            enabled: true,
            enable_token_persistence: true,
            tokens: AgentTokens {
                dns: Some("from-config".into()),
                ..AgentTokens::default()
            },
            ..AclConfig::default()
        };
        let tables: TablesSource = Arc::new(|| Arc::new(crate::state::Tables::default()));
        let acl = Authorizer::new(config.clone(), "dc1".into(), tables.clone())
            .persisting_tokens(path.clone())
            .unwrap();
        acl.set_agent_token("agent", Some("agent-secret".into()))
            .unwrap()
            .unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let saved: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(
            saved,
            serde_json::json!({"agent": "agent-secret", "dns": "from-config"})
        );
        let again = Authorizer::new(config, "dc1".into(), tables)
            .persisting_tokens(path)
            .unwrap();
        assert_eq!(again.agent_tokens().agent.as_deref(), Some("agent-secret"));
        assert!(!format!("{:?}", again.agent_tokens()).contains("agent-secret"));
    }
}
