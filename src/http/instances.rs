//! Which service instances a catalog or health read is about: the instances of a service
//! name, or the instances that take mesh traffic for it (its connect proxies and
//! Connect-native instances). One place decides their topics, rows and index, so
//! `/v1/catalog/service` and `/v1/catalog/connect` (and the health pair) cannot drift apart.

use crate::state::catalog::{service_topic, CHECKS_TOPIC, SERVICES_TOPIC};
use crate::state::{Match, Tables};
use crate::types::{Node, Service};

#[derive(Clone, Copy)]
pub enum Instances<'a> {
    Named(&'a str),
    Connect(&'a str),
}

impl Instances<'_> {
    /// What a blocking read waits on. Proxies have names of their own, so a connect read
    /// wakes on any service or check change.
    pub fn topics(self) -> Vec<(String, Match)> {
        match self {
            Instances::Named(name) => vec![(service_topic(name), Match::Exact)],
            Instances::Connect(_) => vec![
                (SERVICES_TOPIC.to_string(), Match::Exact),
                (CHECKS_TOPIC.to_string(), Match::Exact),
            ],
        }
    }

    /// The instances with their nodes, filtered to those carrying every tag in `tags`.
    pub fn rows<'t>(
        self,
        tables: &'t Tables,
        tags: &'t [String],
    ) -> Box<dyn Iterator<Item = (&'t Node, &'t Service)> + 't>
    where
        Self: 't,
    {
        let rows: Box<dyn Iterator<Item = (&'t Node, &'t Service)> + 't> = match self {
            Instances::Named(name) => Box::new(tables.service_nodes(name)),
            Instances::Connect(name) => Box::new(tables.connect_nodes(name)),
        };
        Box::new(rows.filter(move |(_, service)| tags.iter().all(|tag| service.tags.contains(tag))))
    }

    /// The index the answer carries.
    pub fn index(self, tables: &Tables) -> u64 {
        match self {
            Instances::Named(name) => tables.service_index(name),
            Instances::Connect(_) => {
                let indexes = tables.table_index();
                indexes.services.max(indexes.checks)
            }
        }
    }
}
