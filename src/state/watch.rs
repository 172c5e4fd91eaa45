//! Change notification for blocking queries: a synchronous map from topic strings to waiters.
//!
//! A topic names what a read depended on (`kv/<key>`, `service/<name>`, `nodes`, ...). A waiter
//! registers either an exact topic or a prefix of topics (a recursive KV read). The FSM reports
//! the topics each applied batch touched, and only waiters on those topics (or on a prefix of
//! them) are woken, so a write wakes only the queries whose answer it could change.
//!
//! A waiter is a `tokio::sync::Notify`: `notify_one` stores a permit, so a change that lands
//! between registering and awaiting is never lost. Ten thousand waiters are ten thousand small
//! map entries, not threads.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

/// How a registered topic matches the topics a write touches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Match {
    Exact,
    Prefix,
}

struct Waiter {
    mode: Match,
    notify: Arc<Notify>,
}

/// A topic's waiters by registration id: a guard's drop removes its own entry without
/// scanning the others (thousands of proxy tasks wait on the same few topics and each
/// re-registers after every wake-up).
type Waiters = BTreeMap<u64, Waiter>;

#[derive(Default)]
pub struct WatchRegistry {
    waiters: Mutex<BTreeMap<String, Waiters>>,
    next_id: AtomicU64,
}

impl WatchRegistry {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Waiters>> {
        // A panic while holding this lock cannot leave the map inconsistent (every mutation is
        // a single insert or remove), so a poisoned lock is still safe to use.
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers interest in `topics`; the returned guard wakes when any of them changes and
    /// unregisters itself when dropped.
    pub fn watch(self: &Arc<Self>, topics: &[(String, Match)]) -> WatchGuard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let notify = Arc::new(Notify::new());
        let mut waiters = self.lock();
        for (topic, mode) in topics {
            waiters.entry(topic.clone()).or_default().insert(
                id,
                Waiter {
                    mode: *mode,
                    notify: notify.clone(),
                },
            );
        }
        drop(waiters);
        WatchGuard {
            registry: self.clone(),
            topics: topics.iter().map(|(topic, _)| topic.clone()).collect(),
            id,
            notify,
        }
    }

    /// Wakes every waiter on one of `touched`, or on a prefix registration covering it.
    pub fn notify(&self, touched: &[String]) {
        let waiters = self.lock();
        if waiters.is_empty() {
            return;
        }
        for topic in touched {
            if let Some(list) = waiters.get(topic.as_str()) {
                list.values().for_each(|waiter| waiter.notify.notify_one());
            }
            // Every proper prefix of the topic, cut at character boundaries.
            for (cut, _) in topic.char_indices() {
                if let Some(list) = waiters.get(&topic[..cut]) {
                    list.values()
                        .filter(|waiter| waiter.mode == Match::Prefix)
                        .for_each(|waiter| waiter.notify.notify_one());
                }
            }
        }
    }

    /// Wakes every waiter (after a snapshot restore replaced every table).
    pub fn notify_all(&self) {
        for list in self.lock().values() {
            list.values().for_each(|waiter| waiter.notify.notify_one());
        }
    }

    /// Number of registered (topic, waiter) pairs, for metrics and tests.
    pub fn len(&self) -> usize {
        self.lock().values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A registration; `changed().await` resolves after a write touching one of its topics.
pub struct WatchGuard {
    registry: Arc<WatchRegistry>,
    topics: Vec<String>,
    id: u64,
    notify: Arc<Notify>,
}

impl WatchGuard {
    pub async fn changed(&self) {
        self.notify.notified().await;
    }
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        let mut waiters = self.registry.lock();
        for topic in &self.topics {
            if let Some(list) = waiters.get_mut(topic) {
                list.remove(&self.id);
                if list.is_empty() {
                    waiters.remove(topic);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    fn is_ready(guard: &WatchGuard) -> bool {
        let mut future = pin!(guard.changed());
        let mut context = Context::from_waker(Waker::noop());
        matches!(future.as_mut().poll(&mut context), Poll::Ready(()))
    }

    #[test]
    fn exact_waiter_wakes_only_for_its_topic() {
        let registry = Arc::new(WatchRegistry::default());
        let guard = registry.watch(&[("kv/a".into(), Match::Exact)]);
        registry.notify(&["kv/ab".into(), "kv/b".into()]);
        assert!(!is_ready(&guard));
        registry.notify(&["kv/a".into()]);
        assert!(is_ready(&guard));
    }

    #[test]
    fn prefix_waiter_wakes_for_keys_under_it() {
        let registry = Arc::new(WatchRegistry::default());
        let guard = registry.watch(&[("kv/app/".into(), Match::Prefix)]);
        registry.notify(&["kv/other".into()]);
        assert!(!is_ready(&guard));
        registry.notify(&["kv/app/config/x".into()]);
        assert!(is_ready(&guard));
    }

    #[test]
    fn dropping_the_guard_unregisters() {
        let registry = Arc::new(WatchRegistry::default());
        let guard = registry.watch(&[
            ("nodes".into(), Match::Exact),
            ("kv/".into(), Match::Prefix),
        ]);
        assert_eq!(registry.len(), 2);
        drop(guard);
        assert!(registry.is_empty());
    }

    #[test]
    fn unicode_topics_do_not_split_characters() {
        let registry = Arc::new(WatchRegistry::default());
        let guard = registry.watch(&[("kv/é".into(), Match::Prefix)]);
        registry.notify(&["kv/éé".into()]);
        assert!(is_ready(&guard));
    }
}
