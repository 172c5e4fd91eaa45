//! The catalog tables: nodes, their services and checks, with per-node and per-service-name
//! indexes so a blocking query on one service wakes only for changes to that service.

use imbl::{OrdMap, OrdSet};

use super::Tables;
use crate::types::{
    ApplyError, Check, DeregisterRequest, HealthStatus, Node, RaftIndexes, RegisterRequest, Service,
};

pub const NODES_TOPIC: &str = "nodes";
pub const SERVICES_TOPIC: &str = "services";
pub const CHECKS_TOPIC: &str = "checks";

pub fn service_topic(name: &str) -> String {
    format!("service/{name}")
}

pub fn node_topic(name: &str) -> String {
    format!("node/{name}")
}

impl Tables {
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name)
    }

    /// Services registered on one node, ordered by service id.
    pub fn node_services<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Service> + 'a {
        self.services
            .range((node.to_string(), String::new())..)
            .take_while(move |((owner, _), _)| owner == node)
            .map(|(_, service)| service)
    }

    /// One service instance.
    pub fn service(&self, node: &str, service_id: &str) -> Option<&Service> {
        self.services
            .get(&(node.to_string(), service_id.to_string()))
    }

    /// Every instance of a service name with its node, ordered by (node, service id).
    pub fn service_nodes<'a>(
        &'a self,
        name: &str,
    ) -> impl Iterator<Item = (&'a Node, &'a Service)> + 'a {
        self.service_instances
            .get(name)
            .into_iter()
            .flat_map(|keys| keys.iter())
            .filter_map(|key| {
                let service = self.services.get(key)?;
                Some((self.nodes.get(&key.0)?, service))
            })
    }

    /// Every service instance in the catalog, with the name of its node.
    pub fn all_services(&self) -> impl Iterator<Item = (&str, &Service)> {
        self.services
            .iter()
            .map(|((node, _), service)| (node.as_str(), service))
    }

    /// The instances that accept mesh traffic for `name`: its connect proxies and its
    /// Connect-native instances, ordered by (node, service id).
    pub fn connect_nodes<'a>(
        &'a self,
        name: &str,
    ) -> impl Iterator<Item = (&'a Node, &'a Service)> + 'a {
        self.connect_instances
            .get(name)
            .into_iter()
            .flat_map(|keys| keys.iter())
            .filter_map(|key| {
                let service = self.services.get(key)?;
                Some((self.nodes.get(&key.0)?, service))
            })
    }

    /// Recomputes the indexes that the snapshot encoding leaves out.
    pub(super) fn rebuild_derived_indexes(&mut self) {
        let mut connect = OrdMap::new();
        for (key, service) in &self.services {
            if let Some(destination) = connect_destination(service) {
                connect
                    .entry(destination.to_string())
                    .or_insert_with(OrdSet::new)
                    .insert(key.clone());
            }
        }
        self.connect_instances = connect;
    }

    /// Checks on one node, node-level and service-level.
    pub fn node_checks<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Check> + 'a {
        self.checks
            .range((node.to_string(), String::new())..)
            .take_while(move |((owner, _), _)| owner == node)
            .map(|(_, check)| check)
    }

    /// Every check in the catalog, ordered by (node, check id).
    pub fn all_checks(&self) -> impl Iterator<Item = &Check> {
        self.checks.values()
    }

    /// The checks that decide one instance's health: its own and its node's.
    pub fn instance_checks<'a>(
        &'a self,
        node: &'a str,
        service_id: &'a str,
    ) -> impl Iterator<Item = &'a Check> + 'a {
        self.node_checks(node)
            .filter(move |check| check.service_id.is_empty() || check.service_id == service_id)
    }

    /// Index for a blocking read of one service name's instances.
    pub fn service_index(&self, name: &str) -> u64 {
        self.service_index
            .get(name)
            .copied()
            .unwrap_or(self.table_index.services)
    }

    /// Index for a blocking read of one node and what is registered on it.
    pub fn node_index(&self, name: &str) -> u64 {
        self.node_index
            .get(name)
            .copied()
            .unwrap_or(self.table_index.nodes)
    }
}

/// Refuses a node whose id another node has, or whose name a live node with another id holds.
fn check_node(tables: &Tables, node: &Node) -> Result<(), ApplyError> {
    let node_name = &node.name;
    if !node.id.is_empty() {
        if let Some(other) = tables
            .nodes
            .values()
            .find(|other| other.id == node.id && &other.name != node_name)
        {
            return Err(ApplyError::NodeIdTaken {
                id: node.id.clone(),
                node: node_name.clone(),
                existing: other.name.clone(),
            });
        }
    }
    // Consul's reservation of a live node's name: another node id may take the name only
    // once the node holding it is known to have failed (or gossip never managed it).
    if let Some(existing) = tables.nodes.get(node_name) {
        let other_id = !existing.id.is_empty() && !node.id.is_empty() && existing.id != node.id;
        let healthy = tables
            .node_checks(node_name)
            .find(|check| check.check_id == "serfHealth")
            .is_some_and(|check| check.status != HealthStatus::Critical);
        if other_id && healthy {
            return Err(ApplyError::NodeNameReserved {
                node: node_name.clone(),
                existing_id: existing.id.clone(),
                address: existing.address.clone(),
            });
        }
    }
    Ok(())
}

/// Writes a node alone (a transaction's node `set`), refused where a registration would be.
pub(super) fn ensure_node(
    tables: &mut Tables,
    index: u64,
    node: &Node,
    touched: &mut Vec<String>,
) -> Result<(), ApplyError> {
    check_node(tables, node)?;
    upsert_node(tables, index, node, touched);
    Ok(())
}

/// Registers a node and optionally a service and checks, as one atomic change.
pub(super) fn register(
    tables: &mut Tables,
    index: u64,
    request: &RegisterRequest,
    touched: &mut Vec<String>,
) -> Result<(), ApplyError> {
    // Validate everything before changing anything, so a failed register changes nothing.
    let node_name = &request.node.name;
    check_node(tables, &request.node)?;
    let node_known = tables.nodes.contains_key(node_name);
    if request.skip_node_update && !node_known && request.node.address.is_empty() {
        return Err(ApplyError::NodeNotRegistered(node_name.clone()));
    }
    for check in &request.checks {
        let own_service = request
            .service
            .as_ref()
            .is_some_and(|service| service.id == check.service_id);
        if !check.service_id.is_empty()
            && !own_service
            && !tables
                .services
                .contains_key(&(node_name.clone(), check.service_id.clone()))
        {
            return Err(ApplyError::UnknownCheckService {
                service_id: check.service_id.clone(),
                check_id: check.check_id.clone(),
            });
        }
    }

    if !request.skip_node_update || !node_known {
        upsert_node(tables, index, &request.node, touched);
    }
    if let Some(service) = &request.service {
        upsert_service(tables, index, node_name, service, touched);
    }
    for check in &request.checks {
        upsert_check(tables, index, node_name, check, touched);
    }
    Ok(())
}

pub(super) fn deregister(
    tables: &mut Tables,
    index: u64,
    request: &DeregisterRequest,
    touched: &mut Vec<String>,
) -> Result<(), ApplyError> {
    let node = &request.node;
    if !tables.nodes.contains_key(node) {
        // Consul treats deregistering an unknown node as a no-op.
        return Ok(());
    }
    if let Some(check_id) = &request.check_id {
        remove_check(tables, index, node, check_id, touched);
    }
    if let Some(service_id) = &request.service_id {
        remove_service(tables, index, node, service_id, touched);
    }
    if request.check_id.is_none() && request.service_id.is_none() {
        remove_node(tables, index, node, touched);
    }
    Ok(())
}

/// Removes a node with everything registered on it; an unknown node is left alone.
pub(super) fn remove_node(tables: &mut Tables, index: u64, node: &str, touched: &mut Vec<String>) {
    if !tables.nodes.contains_key(node) {
        return;
    }
    let service_ids: Vec<String> = tables
        .node_services(node)
        .map(|service| service.id.clone())
        .collect();
    for service_id in service_ids {
        remove_service(tables, index, node, &service_id, touched);
    }
    let check_ids: Vec<String> = tables
        .node_checks(node)
        .map(|check| check.check_id.clone())
        .collect();
    for check_id in check_ids {
        remove_check(tables, index, node, &check_id, touched);
    }
    tables.nodes.remove(node);
    super::coordinate::forget(tables, index, node, touched);
    touch_node(tables, index, node, touched);
    tables.table_index.nodes = index;
    touched.push(NODES_TOPIC.into());
}

fn touch_node(tables: &mut Tables, index: u64, node: &str, touched: &mut Vec<String>) {
    tables.node_index.insert(node.to_string(), index);
    touched.push(node_topic(node));
}

fn touch_service(tables: &mut Tables, index: u64, name: &str, touched: &mut Vec<String>) {
    tables.service_index.insert(name.to_string(), index);
    touched.push(service_topic(name));
}

/// Services whose health a node-level change affects.
fn services_on(tables: &Tables, node: &str) -> Vec<String> {
    let mut names: Vec<String> = tables
        .node_services(node)
        .map(|service| service.name.clone())
        .collect();
    names.dedup();
    names
}

fn upsert_node(tables: &mut Tables, index: u64, node: &Node, touched: &mut Vec<String>) {
    let previous = tables.nodes.get(&node.name);
    let mut next = node.clone();
    next.indexes = previous.map_or(RaftIndexes::default(), |previous| previous.indexes);
    if previous == Some(&next) {
        return; // Unchanged: Consul does not bump the index of an identical registration.
    }
    next.indexes = RaftIndexes {
        create: previous.map_or(index, |previous| previous.indexes.create),
        modify: index,
    };
    tables.nodes.insert(node.name.clone(), next);
    tables.table_index.nodes = index;
    touched.push(NODES_TOPIC.into());
    touch_node(tables, index, &node.name, touched);
    // Node address changes show in every service query that returns the node.
    for name in services_on(tables, &node.name) {
        touch_service(tables, index, &name, touched);
    }
}

pub(super) fn upsert_service(
    tables: &mut Tables,
    index: u64,
    node: &str,
    service: &Service,
    touched: &mut Vec<String>,
) {
    let key = (node.to_string(), service.id.clone());
    let previous = tables.services.get(&key).cloned();
    let mut next = service.clone();
    next.indexes = previous
        .as_ref()
        .map_or(RaftIndexes::default(), |previous| previous.indexes);
    if previous.as_ref() == Some(&next) {
        return;
    }
    next.indexes = RaftIndexes {
        create: previous
            .as_ref()
            .map_or(index, |previous| previous.indexes.create),
        modify: index,
    };
    if let Some(previous) = &previous {
        if previous.name != service.name {
            unlink_instance(tables, &previous.name, &key);
            touch_service(tables, index, &previous.name, touched);
        }
        if let Some(destination) = connect_destination(previous) {
            unlink(&mut tables.connect_instances, destination, &key);
        }
    }
    tables
        .service_instances
        .entry(service.name.clone())
        .or_default()
        .insert(key.clone());
    if let Some(destination) = connect_destination(service) {
        tables
            .connect_instances
            .entry(destination.to_string())
            .or_default()
            .insert(key.clone());
    }
    tables.services.insert(key, next);
    tables.table_index.services = index;
    touched.push(SERVICES_TOPIC.into());
    touch_service(tables, index, &service.name, touched);
    touch_node(tables, index, node, touched);
}

fn unlink_instance(tables: &mut Tables, name: &str, key: &(String, String)) {
    unlink(&mut tables.service_instances, name, key);
}

fn unlink(
    index: &mut OrdMap<String, OrdSet<(String, String)>>,
    name: &str,
    key: &(String, String),
) {
    if let Some(keys) = index.get_mut(name) {
        keys.remove(key);
        if keys.is_empty() {
            index.remove(name);
        }
    }
}

/// The service whose mesh traffic an instance takes: a proxy's destination, or a
/// Connect-native instance's own name.
fn connect_destination(service: &Service) -> Option<&str> {
    if service.kind == "connect-proxy" {
        service
            .proxy
            .as_ref()
            .map(|proxy| proxy.destination_service_name.as_str())
    } else if service.connect_native {
        Some(service.name.as_str())
    } else {
        None
    }
}

pub(super) fn upsert_check(
    tables: &mut Tables,
    index: u64,
    node: &str,
    check: &Check,
    touched: &mut Vec<String>,
) {
    let mut next = check.clone();
    next.node = node.to_string();
    if let Some(service) = tables
        .services
        .get(&(node.to_string(), check.service_id.clone()))
    {
        next.service_name = service.name.clone();
        next.service_tags = service.tags.clone();
    }
    let key = (node.to_string(), check.check_id.clone());
    let previous = tables.checks.get(&key);
    next.indexes = previous.map_or(RaftIndexes::default(), |previous| previous.indexes);
    if previous == Some(&next) {
        return;
    }
    next.indexes = RaftIndexes {
        create: previous.map_or(index, |previous| previous.indexes.create),
        modify: index,
    };
    let affected = if next.service_id.is_empty() {
        services_on(tables, node)
    } else {
        vec![next.service_name.clone()]
    };
    tables.checks.insert(key, next);
    tables.table_index.checks = index;
    touched.push(CHECKS_TOPIC.into());
    touch_node(tables, index, node, touched);
    for name in affected {
        touch_service(tables, index, &name, touched);
    }
}

pub(super) fn remove_check(
    tables: &mut Tables,
    index: u64,
    node: &str,
    check_id: &str,
    touched: &mut Vec<String>,
) {
    let Some(check) = tables
        .checks
        .remove(&(node.to_string(), check_id.to_string()))
    else {
        return;
    };
    let affected = if check.service_id.is_empty() {
        services_on(tables, node)
    } else {
        vec![check.service_name.clone()]
    };
    tables.table_index.checks = index;
    touched.push(CHECKS_TOPIC.into());
    touch_node(tables, index, node, touched);
    for name in affected {
        touch_service(tables, index, &name, touched);
    }
}

pub(super) fn remove_service(
    tables: &mut Tables,
    index: u64,
    node: &str,
    service_id: &str,
    touched: &mut Vec<String>,
) {
    let key = (node.to_string(), service_id.to_string());
    let Some(service) = tables.services.remove(&key) else {
        return;
    };
    let check_ids: Vec<String> = tables
        .node_checks(node)
        .filter(|check| check.service_id == service_id)
        .map(|check| check.check_id.clone())
        .collect();
    for check_id in check_ids {
        remove_check(tables, index, node, &check_id, touched);
    }
    unlink_instance(tables, &service.name, &key);
    if let Some(destination) = connect_destination(&service) {
        unlink(&mut tables.connect_instances, destination, &key);
    }
    tables.table_index.services = index;
    touched.push(SERVICES_TOPIC.into());
    touch_service(tables, index, &service.name, touched);
    touch_node(tables, index, node, touched);
}
