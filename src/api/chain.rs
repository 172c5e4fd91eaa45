//! The discovery chain in Consul's JSON (`/v1/discovery-chain/:service`), built explicitly
//! from the compiled chain: field names, which fields are left out when empty, durations as Go
//! prints them and request timeouts in nanoseconds, as Consul answers.

use serde_json::{Map, Value};

use crate::types::chain::{weight_json, Chain, Node, Target};
use crate::types::duration::format_go_duration;

fn strings(list: &Option<Vec<String>>) -> Value {
    match list {
        Some(list) => Value::from(list.clone()),
        None => Value::Null,
    }
}

pub fn chain(chain: &Chain) -> Value {
    let mut out = Map::new();
    out.insert("ServiceName".into(), chain.service_name.clone().into());
    out.insert("Namespace".into(), chain.namespace.clone().into());
    out.insert("Partition".into(), chain.partition.clone().into());
    out.insert("Datacenter".into(), chain.datacenter.clone().into());
    if !chain.customization_hash.is_empty() {
        out.insert(
            "CustomizationHash".into(),
            chain.customization_hash.clone().into(),
        );
    }
    if chain.default {
        out.insert("Default".into(), true.into());
    }
    out.insert("Protocol".into(), chain.protocol.clone().into());
    out.insert("StartNode".into(), chain.start_node.clone().into());
    let nodes: Map<String, Value> = chain
        .nodes
        .iter()
        .map(|(key, node)| (key.clone(), node_json(node)))
        .collect();
    out.insert("Nodes".into(), Value::Object(nodes));
    let targets: Map<String, Value> = chain
        .targets
        .iter()
        .map(|(key, target)| (key.clone(), target_json(target)))
        .collect();
    out.insert("Targets".into(), Value::Object(targets));
    out.insert("AutoVirtualIPs".into(), strings(&chain.auto_virtual_ips));
    out.insert(
        "ManualVirtualIPs".into(),
        strings(&chain.manual_virtual_ips),
    );
    Value::Object(out)
}

fn node_json(node: &Node) -> Value {
    let mut out = Map::new();
    out.insert("Type".into(), node.r#type.into());
    out.insert("Name".into(), node.name.clone().into());
    if let Some(routes) = &node.routes {
        let routes: Vec<Value> = routes
            .iter()
            .map(|route| {
                let mut out = Map::new();
                out.insert("Definition".into(), route.definition.clone());
                out.insert("NextNode".into(), route.next_node.clone().into());
                Value::Object(out)
            })
            .collect();
        out.insert("Routes".into(), Value::Array(routes));
    }
    if let Some(splits) = &node.splits {
        let splits: Vec<Value> = splits
            .iter()
            .map(|split| {
                let mut out = Map::new();
                out.insert("Definition".into(), split.definition.clone());
                out.insert("Weight".into(), weight_json(split.weight));
                out.insert("NextNode".into(), split.next_node.clone().into());
                Value::Object(out)
            })
            .collect();
        out.insert("Splits".into(), Value::Array(splits));
    }
    if let Some(resolver) = &node.resolver {
        let mut json = Map::new();
        json.insert(
            "ConnectTimeout".into(),
            format_go_duration(resolver.connect_timeout).into(),
        );
        if resolver.default {
            json.insert("Default".into(), true.into());
        }
        if let Some(timeout) = resolver.request_timeout {
            json.insert(
                "RequestTimeout".into(),
                Value::from(timeout.as_nanos() as u64),
            );
        }
        json.insert("Target".into(), resolver.target.clone().into());
        if let Some(failover) = &resolver.failover {
            let mut targets = Map::new();
            targets.insert("Targets".into(), Value::from(failover.targets.clone()));
            json.insert("Failover".into(), Value::Object(targets));
        }
        out.insert("Resolver".into(), Value::Object(json));
    }
    if let Some(balancer) = &node.load_balancer {
        out.insert("LoadBalancer".into(), balancer.clone());
    }
    Value::Object(out)
}

fn target_json(target: &Target) -> Value {
    let mut out = Map::new();
    out.insert(
        "ConnectTimeout".into(),
        format_go_duration(target.connect_timeout).into(),
    );
    out.insert("ID".into(), target.id.clone().into());
    out.insert("Service".into(), target.service.clone().into());
    if !target.service_subset.is_empty() {
        out.insert("ServiceSubset".into(), target.service_subset.clone().into());
    }
    out.insert("Namespace".into(), target.namespace.clone().into());
    out.insert("Partition".into(), target.partition.clone().into());
    out.insert("Datacenter".into(), target.datacenter.clone().into());
    out.insert("MeshGateway".into(), target.mesh_gateway.clone());
    let mut subset = Map::new();
    if !target.subset.filter.is_empty() {
        subset.insert("Filter".into(), target.subset.filter.clone().into());
    }
    if target.subset.only_passing {
        subset.insert("OnlyPassing".into(), true.into());
    }
    out.insert("Subset".into(), Value::Object(subset));
    out.insert("TransparentProxy".into(), target.transparent_proxy.clone());
    out.insert("SNI".into(), target.sni.clone().into());
    out.insert("Name".into(), target.name.clone().into());
    Value::Object(out)
}
