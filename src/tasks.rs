//! The one place long-lived tasks start. Every task the agent runs for longer than a request
//! (listeners, the write batcher, leader duties, check runners, anti-entropy, proxy snapshot
//! watchers, leaf-certificate owners, xDS streams, DNS connections) is spawned through `Tasks`
//! under one shutdown token, tracked so `server::run` can wait for all of them, and counted by
//! name so `/v1/agent/metrics` shows how many of each are alive (a leak shows as a count that
//! only grows).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::FutureExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone, Default)]
pub struct Tasks {
    shutdown: CancellationToken,
    tracker: TaskTracker,
    alive: Arc<Mutex<BTreeMap<&'static str, usize>>>,
}

/// Decrements a name's count when its task ends, however it ends.
struct Alive {
    counts: Arc<Mutex<BTreeMap<&'static str, usize>>>,
    name: &'static str,
}

impl Alive {
    fn new(counts: &Arc<Mutex<BTreeMap<&'static str, usize>>>, name: &'static str) -> Alive {
        *counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(name)
            .or_default() += 1;
        Alive {
            counts: counts.clone(),
            name,
        }
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(self.name) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(self.name);
            }
        }
    }
}

impl Tasks {
    pub fn new() -> Tasks {
        Tasks::default()
    }

    /// The token every task stops on.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Spawns `task`, which is dropped when shutdown begins if it has not ended by then.
    ///
    /// Combinators rather than an `async` block: a block that captured `task` and then
    /// awaited it would keep room for it twice in the spawned future (an xDS stream's task is
    /// several KB, and there are thousands).
    pub fn spawn<F>(&self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let alive = Alive::new(&self.alive, name);
        let stop = Box::pin(self.shutdown.clone().cancelled_owned());
        self.tracker
            .spawn(futures::future::select(Box::pin(task), stop).map(move |_| drop(alive)));
    }

    /// Spawns `task`, which watches the shutdown token itself and finishes its own way (a
    /// listener draining its connections, a loop that selects on the token); `stop` gives it
    /// until its limit. Nothing wraps it, so it costs no more than the task itself: the
    /// choice for the tasks there are thousands of (streams, snapshot watchers, leaf
    /// certificates, check runners).
    pub fn spawn_graceful<F>(&self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let alive = Alive::new(&self.alive, name);
        self.tracker.spawn(task.map(move |()| drop(alive)));
    }

    /// How many tasks of each name are alive.
    pub fn alive(&self) -> BTreeMap<&'static str, usize> {
        self.alive
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Begins shutdown and waits up to `limit` for every task to end; false if some did not.
    pub async fn stop(&self, limit: Duration) -> bool {
        self.shutdown.cancel();
        self.tracker.close();
        tokio::time::timeout(limit, self.tracker.wait())
            .await
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tasks_are_counted_by_name_and_stop_with_the_token() {
        let tasks = Tasks::new();
        let (_finish, finished) = tokio::sync::oneshot::channel::<()>();
        tasks.spawn("forever", std::future::pending());
        tasks.spawn("until-told", async move {
            let _ = finished.await;
        });
        let (done, wait_done) = tokio::sync::oneshot::channel::<()>();
        tasks.spawn("quick", async move {
            let _ = done.send(());
        });
        wait_done.await.unwrap();
        tokio::task::yield_now().await;
        let alive = tasks.alive();
        assert_eq!(alive.get("forever"), Some(&1));
        assert_eq!(alive.get("until-told"), Some(&1));
        assert!(tasks.stop(Duration::from_secs(5)).await);
        assert!(tasks.alive().is_empty());
    }
}
