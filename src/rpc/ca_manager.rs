//! The leader's side of the built-in CA: bootstrapping the root on first leadership, rotating
//! it with a cross-signed certificate when the key changes, pruning old roots, and signing
//! leaf CSRs under the configured rate limits.
//!
//! Key material is created here (it needs randomness and a clock) and replicated through Raft
//! as plain data, so every server holds the same roots and any new leader can sign.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use super::writes::Writer;
use super::{Leadership, RpcError};
use crate::connect::ca::{self, KeyType, RootCert, Signer};
use crate::state::Store;
use crate::types::connect::{CaConfig, CaRoot, CaState};
use crate::types::duration::unix_secs;
use crate::types::{Command, CommandResult};

/// Consul's name for a built-in root.
const ROOT_NAME: &str = "Consul CA Primary Cert";

/// Leaf serials are `term << 32 | counter`: a later leader's serials are always higher, with
/// no Raft write per signature. Roots and cross-signatures draw from a separate high range.
const ROOT_SERIAL_BASE: u64 = 0x7f00_0000_0000_0000;

/// Why a CSR was not signed.
#[derive(Debug, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum SignError {
    /// The CSR breaks a rule (400).
    #[error("{0}")]
    Invalid(String),
    /// `CSRMaxPerSecond` or `CSRMaxConcurrent` was reached (429); the caller retries.
    #[error("Rate limit reached, try again later")]
    RateLimited,
    /// No CA yet, or no active root (500); the caller retries.
    #[error("{0}")]
    Unavailable(String),
    /// Not the leader, or the cluster failed (500); the caller retries.
    #[error(transparent)]
    Rpc(#[from] RpcError),
}

/// Why the CA could not be set up or changed.
#[derive(Debug, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum CaError {
    /// The configuration cannot be used (400).
    #[error("{0}")]
    Invalid(String),
    /// The CA has not bootstrapped, or its state changed concurrently (500).
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Rpc(#[from] RpcError),
}

/// A signed leaf with the chain a client needs.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Leaf {
    /// The leaf followed by the active root's cross-signed certificates, if any.
    pub cert_pem: String,
    pub serial: String,
    pub service: String,
    pub service_uri: String,
    pub valid_after: SystemTime,
    pub valid_before: SystemTime,
    /// The root that signed it.
    pub root_id: String,
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
}

pub struct CaManager {
    writer: Writer,
    store: Arc<Store>,
    leadership: watch::Receiver<Leadership>,
    datacenter: String,
    /// Whether this is the primary datacenter's CA, which has its own roots. A secondary's
    /// state mirrors the primary's roots (without their keys) and signs with an intermediate
    /// the primary's active root certified: the first of that root's intermediate
    /// certificates, whose key it keeps in the root's `key_pem` (`server::replication`).
    primary: bool,
    /// The signer for the active issuer, keyed by its certificate, rebuilt when it changes.
    signer: Mutex<Option<(String, Arc<Signer>)>>,
    /// `(term, counter)` of the last leaf serial.
    serial: Mutex<(u64, u64)>,
    bucket: Mutex<Bucket>,
    in_flight: AtomicU64,
}

fn to_stored(root: &RootCert) -> CaRoot {
    CaRoot {
        id: root.id.clone(),
        name: ROOT_NAME.into(),
        serial: root.serial.clone(),
        cert_pem: root.cert_pem.clone(),
        key_pem: root.key_pem.clone(),
        intermediate_certs: Vec::new(),
        not_before_unix: unix_secs(root.not_before),
        not_after_unix: unix_secs(root.not_after),
        active: true,
        key_type: root.key_type.into(),
        key_bits: root.key_bits,
        rotated_out_unix: 0,
        indexes: Default::default(),
    }
}

fn from_stored(root: &CaRoot) -> RootCert {
    RootCert {
        id: root.id.clone(),
        cert_pem: root.cert_pem.clone(),
        key_pem: root.key_pem.clone(),
        serial: root.serial.clone(),
        not_before: UNIX_EPOCH + Duration::from_secs(root.not_before_unix.max(0) as u64),
        not_after: UNIX_EPOCH + Duration::from_secs(root.not_after_unix.max(0) as u64),
        key_type: if root.key_type == "rsa" { "rsa" } else { "ec" },
        key_bits: root.key_bits,
    }
}

fn key_type(config: &CaConfig) -> Result<KeyType, CaError> {
    KeyType::parse(&config.private_key_type, config.private_key_bits)
        .map_err(|error| CaError::Invalid(error.to_string()))
}

/// A serial for a root, distinct from every leaf serial and from other roots (microseconds).
fn root_serial(now: SystemTime) -> u64 {
    let micros = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_micros() as u64);
    ROOT_SERIAL_BASE | (micros & 0x00ff_ffff_ffff_ffff)
}

impl CaManager {
    pub fn new(
        writer: Writer,
        store: Arc<Store>,
        leadership: watch::Receiver<Leadership>,
        datacenter: String,
        primary: bool,
    ) -> CaManager {
        CaManager {
            writer,
            store,
            leadership,
            datacenter,
            primary,
            signer: Mutex::new(None),
            serial: Mutex::new((0, 0)),
            bucket: Mutex::new(Bucket {
                tokens: 0.0,
                refilled: Instant::now(),
            }),
            in_flight: AtomicU64::new(0),
        }
    }

    pub fn state(&self) -> Option<Arc<CaState>> {
        self.store.snapshot().ca().cloned()
    }

    /// Replaces the CA's state if it was last written at `expected_index` (a secondary's
    /// replication writes the primary's roots this way).
    pub async fn replace(&self, state: CaState, expected_index: u64) -> Result<(), CaError> {
        self.write(state, expected_index).await
    }

    async fn write(&self, state: CaState, expected_index: u64) -> Result<(), CaError> {
        let command = Command::CaSet {
            state: Box::new(state),
            expected_index,
        };
        match self.writer.write(command).await? {
            (_, CommandResult::Cas(true)) => Ok(()),
            (_, CommandResult::Cas(false)) => Err(CaError::Unavailable(
                "the CA state changed concurrently; try again".into(),
            )),
            (_, other) => Err(CaError::Unavailable(format!("unexpected result {other:?}"))),
        }
    }

    /// On leadership: creates the cluster id and first root if there is none yet.
    pub async fn bootstrap(&self, config: &CaConfig) -> Result<(), CaError> {
        // A secondary's CA comes from the primary.
        if self.state().is_some() || !self.primary {
            return Ok(());
        }
        let cluster_id = uuid::Uuid::new_v4().to_string();
        let trust_domain = format!("{cluster_id}.consul");
        let now = SystemTime::now();
        let root = ca::generate_root(
            &trust_domain,
            root_serial(now),
            key_type(config)?,
            Duration::from_secs(config.root_cert_ttl_secs),
            now,
        )
        .map_err(|error| CaError::Invalid(error.to_string()))?;
        let state = CaState {
            cluster_id,
            config: config.clone(),
            roots: vec![to_stored(&root)],
            indexes: Default::default(),
        };
        self.write(state, 0).await?;
        tracing::info!(trust_domain, root = %root.id, "initialized the built-in CA");
        Ok(())
    }

    /// Applies a new configuration. A change of key type or size rotates the root: the new
    /// root is cross-signed by the old one, both are listed, and new leafs chain to either.
    pub async fn set_config(&self, config: CaConfig) -> Result<bool, CaError> {
        let current = self
            .state()
            .ok_or_else(|| CaError::Unavailable("Connect CA is not initialized yet".into()))?;
        let mut state = (*current).clone();
        let active = current
            .active_root()
            .ok_or_else(|| CaError::Unavailable("the CA has no active root".into()))?
            .clone();
        // A secondary never makes roots of its own: only the primary's rotation changes them.
        let rotate = self.primary
            && (config.private_key_type != active.key_type
                || config.private_key_bits != active.key_bits);
        state.config = config.clone();
        if rotate {
            let now = SystemTime::now();
            let new_root = ca::generate_root(
                &current.trust_domain(),
                root_serial(now),
                key_type(&config)?,
                Duration::from_secs(config.root_cert_ttl_secs),
                now,
            )
            .map_err(|error| CaError::Invalid(error.to_string()))?;
            let cross = ca::cross_sign(&new_root, &from_stored(&active), now)
                .map_err(|error| CaError::Unavailable(error.to_string()))?;
            for root in &mut state.roots {
                if root.active {
                    root.active = false;
                    root.rotated_out_unix = unix_secs(now);
                }
            }
            let mut stored = to_stored(&new_root);
            stored.intermediate_certs.push(cross);
            state.roots.push(stored);
            tracing::info!(old = %active.id, new = %new_root.id, "rotating the CA root with a cross-signed intermediate");
        }
        self.write(state, current.indexes.modify).await?;
        Ok(rotate)
    }

    /// Drops inactive roots once every leaf they signed has expired: two leaf lifetimes after
    /// they were rotated out (Consul's rule).
    pub async fn prune(&self) -> Result<(), CaError> {
        // A secondary's roots follow the primary's, which prunes them.
        let Some(current) = self.state().filter(|_| self.primary) else {
            return Ok(());
        };
        let keep_for = 2 * current.config.leaf_cert_ttl_secs as i64;
        let now = unix_secs(SystemTime::now());
        let expired = |root: &CaRoot| !root.active && now - root.rotated_out_unix > keep_for;
        if !current.roots.iter().any(expired) {
            return Ok(());
        }
        let mut state = (*current).clone();
        state.roots.retain(|root| !expired(root));
        self.write(state, current.indexes.modify).await?;
        tracing::info!("pruned CA roots rotated out more than two leaf lifetimes ago");
        Ok(())
    }

    /// The signer for leaves under `root`: the root itself in the primary, the intermediate
    /// the primary certified in a secondary.
    fn signer_for(&self, root: &CaRoot) -> Result<Arc<Signer>, SignError> {
        let issuer = if self.primary {
            from_stored(root)
        } else {
            let intermediate = root.intermediate_certs.first().ok_or_else(|| {
                SignError::Unavailable(
                    "the primary has not signed this datacenter's intermediate yet".into(),
                )
            })?;
            RootCert {
                cert_pem: intermediate.clone(),
                ..from_stored(root)
            }
        };
        let mut cached = self.signer.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((pem, signer)) = cached.as_ref() {
            if *pem == issuer.cert_pem {
                return Ok(signer.clone());
            }
        }
        let signer =
            Arc::new(Signer::new(&issuer).map_err(|e| SignError::Unavailable(e.to_string()))?);
        *cached = Some((issuer.cert_pem.clone(), signer.clone()));
        Ok(signer)
    }

    /// The primary's side of federation: certifies a secondary's intermediate key with the
    /// active root. Any server of the primary can, since every one holds the roots.
    pub fn sign_intermediate(&self, csr_pem: &str) -> Result<String, CaError> {
        if !self.primary {
            return Err(CaError::Invalid(
                "only the primary datacenter signs intermediates".into(),
            ));
        }
        let state = self
            .state()
            .ok_or_else(|| CaError::Unavailable("Connect CA is not initialized yet".into()))?;
        let root = state
            .active_root()
            .ok_or_else(|| CaError::Unavailable("the CA has no active root".into()))?;
        let now = SystemTime::now();
        ca::sign_intermediate(
            csr_pem,
            &from_stored(root),
            &state.trust_domain(),
            root_serial(now),
            Duration::from_secs(state.config.intermediate_cert_ttl_secs),
            now,
        )
        .map_err(|error| CaError::Invalid(error.to_string()))
    }

    fn next_serial(&self) -> u64 {
        let term = self.leadership.borrow().term;
        let mut serial = self.serial.lock().unwrap_or_else(PoisonError::into_inner);
        if serial.0 != term {
            *serial = (term, 0);
        }
        serial.1 += 1;
        (term << 32) | (serial.1 & 0xffff_ffff)
    }

    fn take_token(&self, per_second: u32) -> bool {
        if per_second == 0 {
            return true;
        }
        let rate = f64::from(per_second);
        let mut bucket = self.bucket.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let refill = now.duration_since(bucket.refilled).as_secs_f64() * rate;
        // A burst of up to one second's worth, as Consul's limiter allows.
        bucket.tokens = (bucket.tokens + refill).min(rate);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Signs a leaf CSR for `service` with the active root. Only the leader signs.
    pub fn sign(&self, csr_pem: &str, service: &str) -> Result<Leaf, SignError> {
        self.sign_checked(|signer, trust_domain, serial, ttl| {
            let signed = signer
                .sign(csr_pem, trust_domain, serial, ttl, SystemTime::now())
                .map_err(|error| SignError::Invalid(error.to_string()))?;
            if signed.service != service {
                return Err(SignError::Invalid(format!(
                    "the CSR is for service {:?}, not {service:?}",
                    signed.service
                )));
            }
            Ok(signed)
        })
    }

    /// Signs a client agent's CSR for `spiffe://<td>/agent/client/dc/<dc>/id/<node_id>`
    /// (auto_encrypt). Only the leader signs.
    pub fn sign_agent(
        &self,
        csr_pem: &str,
        node_id: &str,
        dns_names: &[String],
        ip_addresses: &[std::net::IpAddr],
    ) -> Result<Leaf, SignError> {
        let datacenter = self.datacenter.clone();
        self.sign_checked(|signer, trust_domain, serial, ttl| {
            let uri = ca::spiffe_agent_id(trust_domain, &datacenter, node_id);
            signer
                .sign_agent(
                    csr_pem,
                    &ca::AgentIdentity {
                        uri: &uri,
                        node_id,
                        datacenter: &datacenter,
                        dns_names,
                        ip_addresses,
                    },
                    serial,
                    ttl,
                    SystemTime::now(),
                )
                .map_err(|error| SignError::Invalid(error.to_string()))
        })
    }

    /// Signs with the active root through `sign` (given the signer, trust domain, serial and
    /// lifetime), under the rate and concurrency limits; only the leader signs.
    fn sign_checked(
        &self,
        sign: impl FnOnce(&Signer, &str, u64, Duration) -> Result<ca::SignedLeaf, SignError>,
    ) -> Result<Leaf, SignError> {
        {
            let leadership = self.leadership.borrow();
            if !leadership.is_leader {
                return Err(SignError::Rpc(match leadership.leader {
                    Some(_) => RpcError::ForwardToLeader {
                        leader: leadership.leader_address.clone(),
                    },
                    None => RpcError::NoLeader,
                }));
            }
        }
        let state = self
            .state()
            .ok_or_else(|| SignError::Unavailable("Connect CA is not initialized yet".into()))?;
        let config = &state.config;
        if !self.take_token(config.csr_max_per_second) {
            return Err(SignError::RateLimited);
        }
        let in_flight = self.in_flight.fetch_add(1, Ordering::AcqRel);
        let _release = ReleaseOnDrop(&self.in_flight);
        if config.csr_max_concurrent > 0 && in_flight >= u64::from(config.csr_max_concurrent) {
            return Err(SignError::RateLimited);
        }
        let root = state
            .active_root()
            .ok_or_else(|| SignError::Unavailable("the CA has no active root".into()))?;
        let signer = self.signer_for(root)?;
        let signed = sign(
            &signer,
            &state.trust_domain(),
            self.next_serial(),
            Duration::from_secs(config.leaf_cert_ttl_secs),
        )?;
        if signed.datacenter != self.datacenter {
            return Err(SignError::Invalid(format!(
                "the CSR is for datacenter {:?}, not {:?}",
                signed.datacenter, self.datacenter
            )));
        }
        let mut chain = signed.cert_pem.clone();
        for intermediate in &root.intermediate_certs {
            if !chain.ends_with('\n') {
                chain.push('\n');
            }
            chain.push_str(intermediate);
        }
        Ok(Leaf {
            cert_pem: chain,
            serial: signed.serial,
            service: signed.service,
            service_uri: signed.service_uri,
            valid_after: signed.valid_after,
            valid_before: signed.valid_before,
            root_id: root.id.clone(),
        })
    }
}

struct ReleaseOnDrop<'a>(&'a AtomicU64);

impl Drop for ReleaseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
