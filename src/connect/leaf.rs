//! The agent's leaf-certificate cache (`/v1/agent/connect/ca/leaf/:service`).
//!
//! The first request for a service starts one task that owns that service's certificate: it
//! makes a key and CSR locally (the private key never leaves the agent), has it signed, and
//! publishes the result; then it sleeps until a random point between 60% and 90% of the
//! certificate's life, or until the active root changes, and does it again. A failed renewal
//! is logged, counted and retried with backoff, and the old certificate is served until a new
//! one arrives, so a certificate never silently lapses.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use rand::Rng;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::ca::{leaf_key_and_csr, spiffe_service_id};
use super::ca_manager::{CaManager, SignError};
use crate::state::connect::CA_TOPIC;
use crate::state::{Match, Store};

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

pub struct LeafCache {
    ca: Arc<CaManager>,
    store: Arc<Store>,
    datacenter: String,
    shutdown: CancellationToken,
    services: Mutex<HashMap<String, watch::Receiver<Option<Arc<IssuedCert>>>>>,
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
        ca: Arc<CaManager>,
        store: Arc<Store>,
        datacenter: String,
        shutdown: CancellationToken,
    ) -> Arc<LeafCache> {
        Arc::new(LeafCache {
            ca,
            store,
            datacenter,
            shutdown,
            services: Mutex::new(HashMap::new()),
            next_index: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        })
    }

    /// The certificates of `service` as they are issued (`None` until the first one), starting
    /// its task on first use.
    pub fn subscribe(self: &Arc<Self>, service: &str) -> watch::Receiver<Option<Arc<IssuedCert>>> {
        let mut services = self.services.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(receiver) = services.get(service) {
            return receiver.clone();
        }
        let (sender, receiver) = watch::channel(None);
        services.insert(service.to_string(), receiver.clone());
        let cache = self.clone();
        let service = service.to_string();
        tokio::spawn(async move { cache.maintain(service, sender).await });
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
                _ = self.shutdown.cancelled() => return current,
            }
        }
    }

    /// The certificate each service currently has (services still waiting for their first
    /// one are absent).
    pub fn current(&self) -> Vec<Arc<IssuedCert>> {
        let services = self.services.lock().unwrap_or_else(PoisonError::into_inner);
        services
            .values()
            .filter_map(|receiver| receiver.borrow().clone())
            .collect()
    }

    fn issue(&self, service: &str) -> Result<IssuedCert, String> {
        let state = self.ca.state().ok_or("Connect CA is not initialized yet")?;
        let uri = spiffe_service_id(&state.trust_domain(), &self.datacenter, service);
        let request = leaf_key_and_csr(&uri, service).map_err(|error| error.to_string())?;
        let leaf = self
            .ca
            .sign(&request.csr_pem, service)
            .map_err(|error| match error {
                SignError::RateLimited => "CSR rate limit reached".to_string(),
                other => other.to_string(),
            })?;
        let floor = self.store.snapshot().last_index();
        let index = self
            .next_index
            .fetch_max(floor, Ordering::AcqRel)
            .max(floor)
            + 1;
        self.next_index.fetch_max(index, Ordering::AcqRel);
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

    fn active_root(&self) -> Option<String> {
        self.ca
            .state()
            .and_then(|state| state.active_root().map(|root| root.id.clone()))
    }

    async fn maintain(
        self: Arc<Self>,
        service: String,
        sender: watch::Sender<Option<Arc<IssuedCert>>>,
    ) {
        let topics = [(CA_TOPIC.to_string(), Match::Exact)];
        let mut retry = RETRY_MIN;
        loop {
            // Registered before issuing, so a rotation during the signature is not missed.
            let ca_changed = self.store.watch(&topics);
            let renew_at = match self.issue(&service) {
                Ok(cert) => {
                    retry = RETRY_MIN;
                    let renew_at = renewal_time(cert.valid_after, cert.valid_before);
                    tracing::debug!(service, serial = %cert.serial, "issued leaf certificate");
                    sender.send_replace(Some(Arc::new(cert)));
                    renew_at
                }
                Err(error) => {
                    self.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(service, %error, retry_in = ?retry, "leaf certificate issue failed; retrying");
                    let at = SystemTime::now() + retry;
                    retry = (retry * 2).min(RETRY_MAX);
                    at
                }
            };
            let issued_root = sender.borrow().as_ref().map(|cert| cert.root_id.clone());
            // Sleep until renewal, waking on CA changes that make the root differ.
            let mut ca_changed = ca_changed;
            loop {
                let sleep = renew_at
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(sleep) => break,
                    _ = ca_changed.changed() => {
                        if issued_root.is_some() && self.active_root() != issued_root {
                            tracing::info!(service, "CA root changed; re-issuing leaf certificate");
                            break;
                        }
                        ca_changed = self.store.watch(&topics);
                    }
                }
            }
        }
    }
}
