//! User events as this agent keeps them (Consul's agent event buffer): events from the LAN
//! pool that pass their filters here (node name, a local service and its tags) are kept, the
//! newest 256, for `/v1/event/list` and its blocking readers.
//!
//! The list's index is not a Raft index: as Consul's, it is derived from the newest event's
//! ID (the two halves of the UUID XORed), so it is agent-local and only ever compared for
//! equality.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{broadcast, watch};

use super::Agent;
use crate::gossip::{Pool, UserEvent};
use crate::tasks::Tasks;

/// How many events an agent keeps (Consul's `userEventBufferSize`).
pub const KEPT: usize = 256;

pub struct EventLog {
    kept: Mutex<VecDeque<UserEvent>>,
    /// The newest kept event's index (0 before any).
    index: watch::Sender<u64>,
}

/// The index Consul derives from an event ID: the XOR of the UUID's two 64-bit halves.
pub use crate::api::watch::event_index as index_of;

/// Whether `event` is meant for this agent: Consul's `shouldProcessUserEvent`. A filter that
/// is not a valid pattern matches nothing (the firing agent refuses those).
pub fn applies(event: &UserEvent, node: &str, services: &[crate::types::Service]) -> bool {
    let pattern = |text: &str| regex::Regex::new(text).ok();
    if !event.node_filter.is_empty()
        && !pattern(&event.node_filter).is_some_and(|re| re.is_match(node))
    {
        return false;
    }
    if event.service_filter.is_empty() {
        return true;
    }
    let Some(service_re) = pattern(&event.service_filter) else {
        return false;
    };
    let tag_re = match event.tag_filter.is_empty() {
        true => None,
        false => match pattern(&event.tag_filter) {
            Some(re) => Some(re),
            None => return false,
        },
    };
    services.iter().any(|service| {
        service_re.is_match(&service.id)
            && tag_re
                .as_ref()
                .is_none_or(|re| service.tags.iter().any(|tag| re.is_match(tag)))
    })
}

impl EventLog {
    /// Keeps the events `pool` delivers that apply to `agent`.
    pub fn start(pool: &Pool, agent: Arc<Agent>, tasks: &Tasks) -> Arc<EventLog> {
        let log = Arc::new(EventLog {
            kept: Mutex::new(VecDeque::new()),
            index: watch::Sender::new(0),
        });
        let mut arriving = pool.user_events();
        let keeper = log.clone();
        let stop = tasks.shutdown().clone();
        tasks.spawn("agent.events", async move {
            loop {
                let event = tokio::select! {
                    _ = stop.cancelled() => return,
                    event = arriving.recv() => event,
                };
                match event {
                    Ok(event) => {
                        let (services, _) = agent.services_and_checks();
                        if applies(&event, &agent.config.node_name, &services) {
                            keeper.keep(event);
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "user events arrived faster than kept; dropped some")
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        log
    }

    fn keep(&self, event: UserEvent) {
        let index = index_of(&event.id);
        tracing::debug!(name = %event.name, id = %event.id, "user event received");
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        kept.push_back(event);
        if kept.len() > KEPT {
            kept.pop_front();
        }
        drop(kept);
        self.index.send_replace(index);
    }

    /// The kept events, oldest first, with `name` if given; and the index of the newest.
    pub fn list(&self, name: Option<&str>) -> (Vec<UserEvent>, u64) {
        let kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        let events: Vec<UserEvent> = kept
            .iter()
            .filter(|event| name.is_none_or(|name| event.name == name))
            .cloned()
            .collect();
        let index = events.last().map_or(0, |event| index_of(&event.id));
        (events, index)
    }

    /// Wakes when any event is kept.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.index.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Service;

    fn event(node: &str, service: &str, tag: &str) -> UserEvent {
        UserEvent {
            id: "b54fe110-7af5-cafc-d1fb-afc8ba432b1c".into(),
            name: "deploy".into(),
            payload: None,
            node_filter: node.into(),
            service_filter: service.into(),
            tag_filter: tag.into(),
            ltime: 0,
        }
    }

    fn service(id: &str, tags: &[&str]) -> Service {
        Service {
            id: id.into(),
            name: id.into(),
            tags: tags.iter().map(|tag| tag.to_string()).collect(),
            ..Service::default()
        }
    }

    #[test]
    fn filters_are_patterns_on_the_node_its_services_and_their_tags() {
        let services = vec![service("web-1", &["v2", "canary"]), service("db", &[])];
        assert!(applies(&event("", "", ""), "n1", &services));
        assert!(applies(&event("^n", "", ""), "n1", &services));
        assert!(!applies(&event("^m", "", ""), "n1", &services));
        assert!(applies(&event("", "web", ""), "n1", &services));
        assert!(!applies(&event("", "cache", ""), "n1", &services));
        assert!(applies(&event("", "web", "^canary$"), "n1", &services));
        assert!(!applies(&event("", "db", "canary"), "n1", &services));
        assert!(
            !applies(&event("(", "", ""), "n1", &services),
            "a bad pattern matches nothing"
        );
    }

    #[test]
    fn the_index_is_the_xor_of_the_id_halves() {
        let id = "b54fe110-7af5-cafc-d1fb-afc8ba432b1c";
        assert_eq!(index_of(id), 0xb54fe1107af5cafc ^ 0xd1fbafc8ba432b1c);
        assert_eq!(index_of("not-a-uuid"), 0);
    }
}
