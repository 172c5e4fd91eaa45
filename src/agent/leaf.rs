//! The agent's leaf-certificate cache (`/v1/agent/connect/ca/leaf/:service`).
//!
//! The first request for a service starts one task that owns that service's certificate: it
//! makes a key and CSR locally (the private key never leaves the agent), has the leader sign
//! it (`Cluster::sign_leaf`), and publishes the result; then it sleeps until a random point
//! between 60% and 90% of the certificate's life, or until the active root changes, and does
//! it again. A failed renewal is logged, counted and retried with backoff, and the old
//! certificate is served until a new one arrives, so a certificate never silently lapses.
//!
//! A task lives while someone holds its certificate (a proxy's snapshot watcher, a blocking
//! query), then for `idle_timeout`, then for as long as a service registered on this agent
//! needs it; so requests for names nobody registers (10,000 junk names) leave nothing behind.
//! Only certificates of locally registered services are kept on disk for restarts.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use rand::Rng;
use tokio::sync::watch;

use super::Agent;
use crate::connect::ca::{leaf_key_and_csr, spiffe_service_id};
use crate::rpc::{Cluster, SignError};
use crate::state::connect::CA_TOPIC;
use crate::state::Match;
use crate::tasks::Tasks;

/// An issued certificate as the agent serves it.
#[derive(Clone, Debug)]
pub struct IssuedCert {
    pub serial: String,
    pub cert_pem: String,
    pub private_key_pem: String,
    pub service: String,
    pub service_uri: String,
    pub valid_after: SystemTime,
    pub valid_before: SystemTime,
    pub root_id: String,
    /// Increases with every certificate this agent issues; blocking queries wait on it.
    pub index: u64,
}

/// Retry delays after a failed issue: fast at first, then capped.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// A retry delay somewhere in the upper half of `backoff`. Many sidecars registered at once
/// all hit the CSR rate limit at once; without jitter their retries stay in lock-step and each
/// round, only the limiter's burst gets through.
fn jittered(backoff: Duration) -> Duration {
    use rand::Rng;
    let half = backoff / 2;
    half + half.mul_f64(rand::thread_rng().gen::<f64>())
}

type CertSender = Arc<watch::Sender<Option<Arc<IssuedCert>>>>;

pub struct LeafCache {
    cluster: Cluster,
    /// Which services this agent has registered (their certificates are kept).
    agent: Arc<Agent>,
    /// Where issued certificates are kept across restarts (`<data_dir>/connect/leaf/`), so a
    /// restarted agent serves the certificates it had and its Envoys are not reconfigured.
    dir: Option<PathBuf>,
    datacenter: String,
    tasks: Tasks,
    /// How long a certificate nobody holds is kept for a service not registered here.
    idle_timeout: Duration,
    services: Mutex<HashMap<String, CertSender>>,
    next_index: AtomicU64,
    /// Failed issue attempts since start (logged each time; exported with metrics).
    pub failures: AtomicU64,
}

/// When to renew a certificate valid from `after` to `before`: a random point between 60% and
/// 90% of its life, so that a fleet's renewals spread out.
pub fn renewal_time(after: SystemTime, before: SystemTime) -> SystemTime {
    let life = before.duration_since(after).unwrap_or_default();
    let fraction = rand::thread_rng().gen_range(0.6..0.9);
    after + life.mul_f64(fraction)
}

impl LeafCache {
    pub fn new(
        cluster: Cluster,
        agent: Arc<Agent>,
        dir: Option<PathBuf>,
        datacenter: String,
        tasks: Tasks,
        idle_timeout: Duration,
    ) -> Arc<LeafCache> {
        Arc::new(LeafCache {
            cluster,
            agent,
            dir,
            datacenter,
            tasks,
            idle_timeout,
            services: Mutex::new(HashMap::new()),
            next_index: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        })
    }

    /// The certificates of `service` as they are issued (`None` until the first one), starting
    /// its task on first use.
    pub fn subscribe(self: &Arc<Self>, service: &str) -> watch::Receiver<Option<Arc<IssuedCert>>> {
        let mut services = self.services.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(sender) = services.get(service) {
            return sender.subscribe();
        }
        let (sender, receiver) = watch::channel(None);
        let sender = Arc::new(sender);
        services.insert(service.to_string(), sender.clone());
        let cache = self.clone();
        let service = service.to_string();
        self.tasks.spawn_graceful("agent.leaf", async move {
            cache.maintain(&service, &sender).await;
        });
        receiver
    }

    /// The current certificate for `service`, once its index exceeds `min_index`, or the
    /// current one when `wait` runs out. `None` if none could be issued within `wait`.
    pub async fn get(
        self: &Arc<Self>,
        service: &str,
        min_index: u64,
        wait: Duration,
    ) -> Option<Arc<IssuedCert>> {
        let mut receiver = self.subscribe(service);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let current = receiver.borrow_and_update().clone();
            if let Some(cert) = &current {
                if cert.index > min_index {
                    return current;
                }
            }
            tokio::select! {
                changed = receiver.changed() => if changed.is_err() { return current },
                _ = tokio::time::sleep_until(deadline) => return current,
                _ = self.tasks.shutdown().cancelled() => return current,
            }
        }
    }

    /// The certificate each service currently has (services still waiting for their first
    /// one are absent).
    pub fn current(&self) -> Vec<Arc<IssuedCert>> {
        let services = self.services.lock().unwrap_or_else(PoisonError::into_inner);
        services
            .values()
            .filter_map(|sender| sender.borrow().clone())
            .collect()
    }

    async fn issue(&self, service: &str) -> Result<IssuedCert, SignError> {
        let state = self
            .cluster
            .ca_state()
            .ok_or_else(|| SignError::Unavailable("Connect CA is not initialized yet".into()))?;
        let uri = spiffe_service_id(&state.trust_domain(), &self.datacenter, service);
        let request = leaf_key_and_csr(&uri, service)
            .map_err(|error| SignError::Invalid(error.to_string()))?;
        let leaf = self.cluster.sign_leaf(&request.csr_pem, service).await?;
        let index = self.next_index();
        Ok(IssuedCert {
            serial: leaf.serial,
            cert_pem: leaf.cert_pem,
            private_key_pem: request.key_pem,
            service: leaf.service,
            service_uri: leaf.service_uri,
            valid_after: leaf.valid_after,
            valid_before: leaf.valid_before,
            root_id: leaf.root_id,
            index,
        })
    }

    /// An index above every index this agent has served, and above the state's.
    fn next_index(&self) -> u64 {
        let floor = self.cluster.snapshot().last_index();
        let index = self
            .next_index
            .fetch_max(floor, Ordering::AcqRel)
            .max(floor)
            + 1;
        self.next_index.fetch_max(index, Ordering::AcqRel);
        index
    }

    fn stored_path(&self, service: &str) -> Option<PathBuf> {
        // Service names are DNS-like; anything else is kept out of the path.
        let safe: String = service
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        Some(self.dir.as_ref()?.join(format!("{safe}.json")))
    }

    /// Keeps `cert` for the next start: written to a temporary file readable only by this
    /// user, then renamed into place. A failure only costs a re-issue after a restart.
    fn save(&self, cert: &IssuedCert) {
        if !self.agent.needs_leaf(&cert.service) {
            return;
        }
        let Some(path) = self.stored_path(&cert.service) else {
            return;
        };
        let stored = serde_json::json!({
            "Serial": cert.serial,
            "CertPEM": cert.cert_pem,
            "PrivateKeyPEM": cert.private_key_pem,
            "Service": cert.service,
            "ServiceURI": cert.service_uri,
            "ValidAfter": crate::types::duration::unix_secs(cert.valid_after),
            "ValidBefore": crate::types::duration::unix_secs(cert.valid_before),
            "RootID": cert.root_id,
        });
        if let Err(error) = crate::files::write_private(&path, stored.to_string().as_bytes()) {
            tracing::warn!(service = %cert.service, path = %path.display(), %error, "cannot keep the leaf certificate for restarts");
        }
    }

    /// The certificate kept from before a restart, if it is still signed by the active root
    /// and not yet due for renewal.
    fn restore(&self, service: &str) -> Option<IssuedCert> {
        let text = std::fs::read_to_string(self.stored_path(service)?).ok()?;
        let stored: serde_json::Value = serde_json::from_str(&text).ok()?;
        let field = |key: &str| stored[key].as_str().map(str::to_string);
        let time = |key: &str| {
            stored[key]
                .as_u64()
                .map(|secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
        };
        let cert = IssuedCert {
            serial: field("Serial")?,
            cert_pem: field("CertPEM")?,
            private_key_pem: field("PrivateKeyPEM")?,
            service: field("Service")?,
            service_uri: field("ServiceURI")?,
            valid_after: time("ValidAfter")?,
            valid_before: time("ValidBefore")?,
            root_id: field("RootID")?,
            index: self.next_index(),
        };
        let life = cert.valid_before.duration_since(cert.valid_after).ok()?;
        let usable = cert.service == service
            && Some(&cert.root_id) == self.active_root().as_ref()
            && SystemTime::now() < cert.valid_after + life.mul_f64(0.9);
        usable.then_some(cert)
    }

    fn active_root(&self) -> Option<String> {
        self.cluster
            .ca_state()
            .and_then(|state| state.active_root().map(|root| root.id.clone()))
    }

    /// Resolves once nobody needs `service`'s certificate (no subscriber, `idle_timeout` has
    /// passed, and no service registered on this agent needs it), having taken the service
    /// out of the map.
    async fn unneeded(&self, service: &str, sender: &CertSender) {
        let mut changes = self.agent.subscribe();
        loop {
            if sender.receiver_count() > 0 {
                sender.closed().await;
            }
            tokio::time::sleep(self.idle_timeout).await;
            while sender.receiver_count() == 0 && self.agent.needs_leaf(service) {
                if changes.changed().await.is_err() {
                    return;
                }
            }
            // The entry is taken out under the map's lock, so nobody can subscribe between
            // this check and the task's end.
            let mut services = self.services.lock().unwrap_or_else(PoisonError::into_inner);
            if sender.receiver_count() == 0 {
                if services
                    .get(service)
                    .is_some_and(|held| Arc::ptr_eq(held, sender))
                {
                    services.remove(service);
                }
                return;
            }
        }
    }

    async fn maintain(&self, service: &str, sender: &CertSender) {
        let topics = [(CA_TOPIC.to_string(), Match::Exact)];
        let mut retry = RETRY_MIN;
        loop {
            // Registered before issuing, so a rotation during the signature is not missed.
            let ca_changed = self.cluster.watch(&topics);
            let restored = if sender.borrow().is_none() {
                self.restore(service)
            } else {
                None
            };
            let outcome = match restored {
                Some(cert) => {
                    tracing::debug!(service, serial = %cert.serial, "serving the leaf certificate kept from before the restart");
                    Ok(cert)
                }
                None => self.issue(service).await.inspect(|cert| self.save(cert)),
            };
            let renew_at = match outcome {
                Ok(cert) => {
                    retry = RETRY_MIN;
                    let renew_at = renewal_time(cert.valid_after, cert.valid_before);
                    tracing::debug!(service, serial = %cert.serial, "issued leaf certificate");
                    sender.send_replace(Some(Arc::new(cert)));
                    renew_at
                }
                Err(error) => {
                    self.failures.fetch_add(1, Ordering::Relaxed);
                    let wait = jittered(retry);
                    tracing::warn!(service, %error, retry_in = ?wait, "leaf certificate issue failed; retrying");
                    retry = (retry * 2).min(RETRY_MAX);
                    SystemTime::now() + wait
                }
            };
            let issued_root = sender.borrow().as_ref().map(|cert| cert.root_id.clone());
            // Sleep until renewal, waking on CA changes that make the root differ; end once
            // nobody needs the certificate.
            let mut ca_changed = ca_changed;
            let unneeded = self.unneeded(service, sender);
            tokio::pin!(unneeded);
            loop {
                let sleep = renew_at
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                tokio::select! {
                    _ = &mut unneeded => return,
                    _ = self.tasks.shutdown().cancelled() => return,
                    _ = tokio::time::sleep(sleep) => break,
                    _ = ca_changed.changed() => {
                        if issued_root.is_some() && self.active_root() != issued_root {
                            tracing::info!(service, "CA root changed; re-issuing leaf certificate");
                            break;
                        }
                        ca_changed = self.cluster.watch(&topics);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_spread_over_the_upper_half_of_the_backoff() {
        let backoff = Duration::from_secs(8);
        let waits: std::collections::BTreeSet<Duration> =
            (0..200).map(|_| jittered(backoff)).collect();
        assert!(waits
            .iter()
            .all(|wait| *wait >= backoff / 2 && *wait <= backoff));
        // Two hundred draws from a 4 s range: lock-step would be one value.
        assert!(waits.len() > 150, "{} distinct waits", waits.len());
    }
}
