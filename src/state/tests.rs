//! Synchronous tests of the state store and the FSM's command semantics; no runtime, no I/O.

use std::collections::BTreeMap;

use super::*;
use crate::types::shape;
use crate::types::*;

fn set(key: &str, value: &str) -> Command {
    Command::Kv(KvOp::Set {
        key: key.into(),
        value: value.as_bytes().to_vec(),
        flags: 0,
    })
}

fn apply(store: &Store, index: u64, command: Command) -> CommandResult {
    store.apply_batch([(index, Some(&command))]).remove(0)
}

fn node(name: &str) -> Node {
    Node {
        id: String::new(),
        name: name.into(),
        address: "10.0.0.1".into(),
        datacenter: "dc1".into(),
        tagged_addresses: BTreeMap::new(),
        meta: BTreeMap::new(),
        indexes: RaftIndexes::default(),
        locality: None,
    }
}

fn service(id: &str, name: &str) -> Service {
    Service {
        id: id.into(),
        name: name.into(),
        port: 80,
        ..Service::default()
    }
}

fn register(node_name: &str, svc: Option<Service>) -> Command {
    Command::CatalogRegister(Box::new(RegisterRequest {
        node: node(node_name),
        skip_node_update: false,
        service: svc,
        checks: Vec::new(),
    }))
}

#[test]
fn set_assigns_create_and_modify_indexes() {
    let store = Store::new();
    apply(&store, 5, set("a", "1"));
    apply(&store, 9, set("a", "2"));
    let tables = store.snapshot();
    let entry = tables.kv_get("a").expect("key a");
    assert_eq!(
        entry.indexes,
        RaftIndexes {
            create: 5,
            modify: 9
        }
    );
    assert_eq!(entry.value, b"2");
    assert_eq!(tables.last_index(), 9);
}

#[test]
fn cas_zero_creates_only_when_absent_and_cas_index_must_match() {
    let store = Store::new();
    let cas = |index| {
        Command::Kv(KvOp::Cas {
            key: "k".into(),
            value: b"v".to_vec(),
            flags: 0,
            index,
        })
    };
    assert_eq!(apply(&store, 2, cas(0)), CommandResult::Kv(true));
    assert_eq!(apply(&store, 3, cas(0)), CommandResult::Kv(false));
    assert_eq!(apply(&store, 4, cas(7)), CommandResult::Kv(false));
    assert_eq!(apply(&store, 5, cas(2)), CommandResult::Kv(true));
    assert_eq!(store.snapshot().kv_get("k").unwrap().indexes.modify, 5);
}

#[test]
fn delete_leaves_a_tombstone_that_raises_the_prefix_index() {
    let store = Store::new();
    apply(&store, 2, set("app/a", "1"));
    apply(&store, 3, set("app/b", "1"));
    apply(&store, 4, set("other", "1"));
    apply(
        &store,
        6,
        Command::Kv(KvOp::Delete {
            key: "app/b".into(),
        }),
    );
    let tables = store.snapshot();
    assert!(tables.kv_get("app/b").is_none());
    assert_eq!(tables.kv_index("app/", true), 6);
    assert_eq!(tables.kv_index("app/a", false), 2);
    assert_eq!(tables.kv_index("app/b", false), 6);
    apply(&store, 7, Command::ReapTombstones { up_to_index: 6 });
    assert_eq!(store.snapshot().kv_index("app/", true), 2);
}

#[test]
fn delete_tree_removes_only_the_prefix() {
    let store = Store::new();
    for (index, key) in ["a/1", "a/2", "ab", "b"].iter().enumerate() {
        apply(&store, index as u64 + 1, set(key, "x"));
    }
    apply(
        &store,
        9,
        Command::Kv(KvOp::DeleteTree {
            prefix: "a/".into(),
        }),
    );
    let tables = store.snapshot();
    let keys: Vec<_> = tables.kv_list("").map(|entry| &*entry.key).collect();
    assert_eq!(keys, ["ab", "b"]);
}

#[test]
fn failed_transaction_changes_nothing() {
    let store = Store::new();
    apply(&store, 2, set("x", "old"));
    let outcome = apply(
        &store,
        3,
        Command::Txn(vec![
            KvOp::Set {
                key: "x".into(),
                value: b"new".to_vec(),
                flags: 0,
            },
            KvOp::Set {
                key: "y".into(),
                value: b"new".to_vec(),
                flags: 0,
            },
            KvOp::CheckNotExists { key: "x".into() },
        ]),
    );
    match outcome {
        CommandResult::Txn(TxnOutcome::RolledBack(errors)) => {
            assert_eq!(errors.len(), 1);
            assert_eq!(errors[0].op_index, 2);
        }
        other => panic!("expected rollback, got {other:?}"),
    }
    let tables = store.snapshot();
    assert_eq!(tables.kv_get("x").unwrap().value, b"old");
    assert!(tables.kv_get("y").is_none());
}

#[test]
fn committed_transaction_returns_values_only_for_reads() {
    let store = Store::new();
    apply(&store, 2, set("r", "read-me"));
    let outcome = apply(
        &store,
        3,
        Command::Txn(vec![
            KvOp::Set {
                key: "w".into(),
                value: b"1".to_vec(),
                flags: 3,
            },
            KvOp::Get { key: "r".into() },
        ]),
    );
    let CommandResult::Txn(TxnOutcome::Committed(results)) = outcome else {
        panic!("expected commit");
    };
    assert_eq!(results.len(), 2);
    let TxnResult::Kv { entry, with_value } = &results[0] else {
        panic!("{results:?}");
    };
    assert!(!with_value);
    assert_eq!(entry.flags, 3);
    let TxnResult::Kv { entry, with_value } = &results[1] else {
        panic!("{results:?}");
    };
    assert!(with_value);
    assert_eq!(entry.value, b"read-me");
}

fn catalog_txn(store: &Store, index: u64, ops: Vec<TxnOp>) -> TxnOutcome {
    match apply(store, index, Command::Transaction(ops)) {
        CommandResult::Txn(outcome) => outcome,
        other => panic!("expected a transaction outcome, got {other:?}"),
    }
}

fn a_check(node_name: &str, id: &str, service_id: &str, status: HealthStatus) -> Check {
    let Command::CatalogRegister(request) = node_check(node_name, status) else {
        unreachable!()
    };
    Check {
        check_id: id.into(),
        name: id.into(),
        service_id: service_id.into(),
        ..request.checks[0].clone()
    }
}

#[test]
fn a_transaction_writes_nodes_services_checks_and_keys_together_or_not_at_all() {
    let store = Store::new();
    let ops = vec![
        TxnOp::Node {
            verb: CatalogVerb::Set,
            node: node("n1"),
        },
        TxnOp::Service {
            verb: CatalogVerb::Set,
            node: "n1".into(),
            service: service("web-1", "web"),
        },
        TxnOp::Check {
            verb: CatalogVerb::Set,
            check: a_check("n1", "web-alive", "web-1", HealthStatus::Passing),
        },
        TxnOp::Kv(KvOp::Set {
            key: "web/leader".into(),
            value: b"n1".to_vec(),
            flags: 0,
        }),
    ];
    let TxnOutcome::Committed(results) = catalog_txn(&store, 5, ops) else {
        panic!("expected a commit");
    };
    assert_eq!(results.len(), 4);
    let TxnResult::Check(check) = &results[2] else {
        panic!("{results:?}");
    };
    assert_eq!(
        check.service_name, "web",
        "the check learns its service's name"
    );
    assert_eq!(check.indexes.modify, 5);
    let tables = store.snapshot();
    assert_eq!(tables.service_nodes("web").count(), 1);
    assert_eq!(tables.service_index("web"), 5);
    assert_eq!(tables.node("n1").unwrap().indexes.create, 5);

    // One stale CAS among good writes rolls every one of them back, with Consul's texts.
    let ops = vec![
        TxnOp::Service {
            verb: CatalogVerb::Set,
            node: "n1".into(),
            service: service("db-1", "db"),
        },
        TxnOp::Node {
            verb: CatalogVerb::DeleteCas { index: 4 },
            node: node("n1"),
        },
        TxnOp::Service {
            verb: CatalogVerb::Set,
            node: "ghost".into(),
            service: service("x", "x"),
        },
        TxnOp::Check {
            verb: CatalogVerb::Get,
            check: a_check("n1", "nope", "", HealthStatus::Passing),
        },
    ];
    let TxnOutcome::RolledBack(errors) = catalog_txn(&store, 6, ops) else {
        panic!("expected a rollback");
    };
    let errors: Vec<(usize, &str)> = errors
        .iter()
        .map(|error| (error.op_index, error.what.as_str()))
        .collect();
    assert_eq!(
        errors,
        [
            (1, "failed to delete node \"n1\", index is stale"),
            (2, "Missing node registration"),
            (3, "check \"nope\" on node \"n1\" doesn't exist"),
        ]
    );
    let tables = store.snapshot();
    assert!(tables.service("n1", "db-1").is_none());
    assert_eq!(tables.service_index("db"), tables.table_index().services);

    // CAS on the current index succeeds; delete takes the node's services and checks along.
    let ops = vec![
        TxnOp::Service {
            verb: CatalogVerb::Cas { index: 5 },
            node: "n1".into(),
            service: Service {
                port: 8080,
                ..service("web-1", "web")
            },
        },
        TxnOp::Service {
            verb: CatalogVerb::Cas { index: 0 },
            node: "n1".into(),
            service: service("web-1", "web"),
        },
    ];
    let TxnOutcome::RolledBack(errors) = catalog_txn(&store, 7, ops) else {
        panic!("cas 0 on an existing service must fail");
    };
    assert_eq!(
        errors[0].what,
        "failed to set service \"web-1\" on node \"n1\", index is stale"
    );
    let ops = vec![TxnOp::Node {
        verb: CatalogVerb::Delete,
        node: node("n1"),
    }];
    assert!(matches!(
        catalog_txn(&store, 8, ops),
        TxnOutcome::Committed(results) if results.is_empty()
    ));
    let tables = store.snapshot();
    assert!(tables.node("n1").is_none());
    assert_eq!(tables.service_nodes("web").count(), 0);
    assert_eq!(tables.all_checks().count(), 0);
}

#[test]
fn a_transaction_failing_a_check_ends_the_sessions_bound_to_it() {
    use crate::types::session::SessionBehavior::Release;
    let store = Store::new();
    apply(&store, 2, node_check("n1", HealthStatus::Passing));
    apply(&store, 3, session("s1", "n1", Release));
    let ops = vec![TxnOp::Check {
        verb: CatalogVerb::Set,
        check: a_check("n1", "alive", "", HealthStatus::Critical),
    }];
    assert!(matches!(
        catalog_txn(&store, 4, ops),
        TxnOutcome::Committed(_)
    ));
    assert!(store.snapshot().session("s1").is_none());
}

#[test]
fn catalog_register_and_deregister_keep_per_service_indexes() {
    let store = Store::new();
    apply(&store, 10, register("n1", Some(service("web-1", "web"))));
    apply(&store, 11, register("n2", Some(service("db-1", "db"))));
    let tables = store.snapshot();
    assert_eq!(tables.service_index("web"), 10);
    assert_eq!(tables.service_index("db"), 11);
    assert_eq!(tables.service_nodes("web").count(), 1);

    apply(
        &store,
        12,
        Command::CatalogDeregister(DeregisterRequest {
            node: "n1".into(),
            service_id: Some("web-1".into()),
            check_id: None,
        }),
    );
    let tables = store.snapshot();
    assert_eq!(tables.service_nodes("web").count(), 0);
    // The removal raises web's index so a blocking query on web sees it; db is untouched.
    assert_eq!(tables.service_index("web"), 12);
    assert_eq!(tables.service_index("db"), 11);
    assert!(tables.node("n1").is_some());
}

#[test]
fn identical_registration_does_not_bump_indexes() {
    let store = Store::new();
    apply(&store, 3, register("n1", Some(service("web-1", "web"))));
    apply(&store, 4, register("n1", Some(service("web-1", "web"))));
    let tables = store.snapshot();
    assert_eq!(tables.node("n1").unwrap().indexes.modify, 3);
    assert_eq!(tables.service_index("web"), 3);
}

#[test]
fn deregistering_a_node_removes_its_services_and_checks() {
    let store = Store::new();
    let mut request = RegisterRequest {
        node: node("n1"),
        skip_node_update: false,
        service: Some(service("web-1", "web")),
        checks: vec![Check {
            node: "n1".into(),
            check_id: "c1".into(),
            name: "c1".into(),
            status: HealthStatus::Passing,
            notes: String::new(),
            output: String::new(),
            service_id: "web-1".into(),
            service_name: String::new(),
            service_tags: Vec::new(),
            check_type: String::new(),
            interval: String::new(),
            timeout: String::new(),
            indexes: RaftIndexes::default(),
        }],
    };
    apply(
        &store,
        2,
        Command::CatalogRegister(Box::new(request.clone())),
    );
    let tables = store.snapshot();
    let check = tables.node_checks("n1").next().expect("check");
    assert_eq!(check.service_name, "web");

    request.checks[0].service_id = "missing".into();
    let result = apply(&store, 3, Command::CatalogRegister(Box::new(request)));
    assert!(matches!(
        result,
        CommandResult::Catalog(Err(ApplyError::UnknownCheckService { service_id, .. }))
            if service_id == "missing"
    ));

    apply(
        &store,
        4,
        Command::CatalogDeregister(DeregisterRequest {
            node: "n1".into(),
            service_id: None,
            check_id: None,
        }),
    );
    let tables = store.snapshot();
    assert!(tables.node("n1").is_none());
    assert_eq!(tables.all_services().count(), 0);
    assert_eq!(tables.node_checks("n1").count(), 0);
    assert_eq!(tables.service_index("web"), 4);
}

#[test]
fn snapshot_restore_round_trips_every_table() {
    let store = Store::new();
    apply(&store, 2, set("a", "1"));
    apply(&store, 3, register("n1", Some(service("web-1", "web"))));
    apply(&store, 4, Command::Kv(KvOp::Delete { key: "a".into() }));
    let bytes = Store::encode(&store.snapshot()).unwrap();

    let restored = Store::new();
    restored.restore(&bytes).expect("restore");
    assert_eq!(Store::encode(&restored.snapshot()).unwrap(), bytes);
    assert_eq!(restored.snapshot().kv_index("a", false), 4);
    assert!(restored.restore(&bytes[..bytes.len() / 2]).is_err());
}

#[test]
fn apply_is_deterministic() {
    let commands = vec![
        (2, set("a", "1")),
        (3, register("n1", Some(service("s1", "web")))),
        (4, Command::Kv(KvOp::DeleteTree { prefix: "".into() })),
        (5, set("b", "2")),
    ];
    let first = Store::new();
    let second = Store::new();
    first.apply_batch(
        commands
            .iter()
            .map(|(index, command)| (*index, Some(command))),
    );
    for (index, command) in &commands {
        second.apply_batch([(*index, Some(command))]);
    }
    assert_eq!(
        Store::encode(&first.snapshot()).unwrap(),
        Store::encode(&second.snapshot()).unwrap()
    );
}

#[test]
fn readers_keep_their_snapshot_while_writes_continue() {
    let store = Store::new();
    apply(&store, 2, set("a", "1"));
    let before = store.snapshot();
    apply(&store, 3, set("a", "2"));
    assert_eq!(before.kv_get("a").unwrap().value, b"1");
    assert_eq!(store.snapshot().kv_get("a").unwrap().value, b"2");
}

#[test]
fn a_batch_applies_in_order_at_one_index_with_one_result_each() {
    let store = Store::new();
    let cas_zero = |key: &str| {
        Command::Kv(KvOp::Cas {
            key: key.into(),
            value: b"v".to_vec(),
            flags: 0,
            index: 0,
        })
    };
    let result = apply(
        &store,
        7,
        Command::Batch(vec![
            set("a", "1"),
            cas_zero("a"),
            cas_zero("b"),
            set("a", "2"),
        ]),
    );
    assert_eq!(
        result,
        CommandResult::Batch(vec![
            CommandResult::Kv(true),
            CommandResult::Kv(false),
            CommandResult::Kv(true),
            CommandResult::Kv(true),
        ])
    );
    let tables = store.snapshot();
    assert_eq!(tables.kv_get("a").unwrap().value, b"2");
    assert_eq!(tables.kv_get("a").unwrap().indexes.modify, 7);
    assert_eq!(tables.kv_get("b").unwrap().indexes.create, 7);
}

fn session(id: &str, node: &str, behavior: crate::types::session::SessionBehavior) -> Command {
    Command::SessionCreate(crate::types::session::Session {
        id: id.into(),
        name: String::new(),
        node: node.into(),
        lock_delay: std::time::Duration::from_secs(15),
        behavior,
        ttl: None,
        node_checks: vec!["alive".into()],
        service_checks: Vec::new(),
        indexes: RaftIndexes::default(),
    })
}

fn node_check(node_name: &str, status: HealthStatus) -> Command {
    Command::CatalogRegister(Box::new(RegisterRequest {
        node: node(node_name),
        skip_node_update: false,
        service: None,
        checks: vec![Check {
            node: node_name.into(),
            check_id: "alive".into(),
            name: "alive".into(),
            status,
            notes: String::new(),
            output: String::new(),
            service_id: String::new(),
            service_name: String::new(),
            service_tags: Vec::new(),
            check_type: String::new(),
            interval: String::new(),
            timeout: String::new(),
            indexes: RaftIndexes::default(),
        }],
    }))
}

fn lock(key: &str, session: &str, value: &str) -> Command {
    Command::Kv(KvOp::Lock {
        key: key.into(),
        value: value.as_bytes().to_vec(),
        flags: 0,
        session: session.into(),
    })
}

#[test]
fn sessions_need_a_live_node_and_healthy_checks() {
    use crate::types::session::SessionBehavior::Release;
    let store = Store::new();
    assert_eq!(
        apply(&store, 2, session("s1", "n1", Release)),
        CommandResult::Error(ApplyError::SessionNodeMissing("n1".into()))
    );
    apply(&store, 3, node_check("n1", HealthStatus::Critical));
    assert!(matches!(
        apply(&store, 4, session("s1", "n1", Release)),
        CommandResult::Error(ApplyError::SessionCheckCritical(_))
    ));
    apply(&store, 5, node_check("n1", HealthStatus::Passing));
    assert_eq!(
        apply(&store, 6, session("s1", "n1", Release)),
        CommandResult::Done
    );
    assert_eq!(store.snapshot().session("s1").unwrap().indexes.create, 6);
}

#[test]
fn locks_follow_consul_semantics_and_die_with_their_session() {
    use crate::types::session::SessionBehavior::{Delete, Release};
    let store = Store::new();
    apply(&store, 2, node_check("n1", HealthStatus::Passing));
    apply(&store, 3, session("a", "n1", Release));
    apply(&store, 4, session("b", "n1", Delete));

    assert_eq!(
        apply(&store, 5, lock("k", "ghost", "x")),
        CommandResult::Error(ApplyError::InvalidSession("ghost".into()))
    );
    assert_eq!(
        apply(&store, 6, lock("k", "a", "1")),
        CommandResult::Kv(true)
    );
    assert_eq!(
        apply(&store, 7, lock("k", "a", "2")),
        CommandResult::Kv(true)
    );
    assert_eq!(
        apply(&store, 8, lock("k", "b", "3")),
        CommandResult::Kv(false)
    );
    let entry = store.snapshot().kv_get("k").unwrap().clone();
    assert_eq!(
        (
            entry.session.as_str(),
            entry.lock_index,
            &*entry.value.read().unwrap()
        ),
        ("a", 1, &b"2"[..])
    );

    let unlock = |session: &str| {
        Command::Kv(KvOp::Unlock {
            key: "k".into(),
            value: b"free".to_vec(),
            flags: 0,
            session: session.into(),
        })
    };
    assert_eq!(apply(&store, 9, unlock("b")), CommandResult::Kv(false));
    assert_eq!(apply(&store, 10, unlock("a")), CommandResult::Kv(true));
    assert_eq!(
        apply(&store, 11, lock("k", "b", "4")),
        CommandResult::Kv(true)
    );
    assert_eq!(store.snapshot().kv_get("k").unwrap().lock_index, 2);
    apply(&store, 12, lock("other", "a", "held"));

    // Session b (behavior delete) goes: its key is deleted and its lock-delay starts.
    apply(&store, 13, Command::SessionDestroy { id: "b".into() });
    assert!(store.snapshot().kv_get("k").is_none());
    assert!(store.lock_delay_remaining("k").is_some());
    // Session a (behavior release) is invalidated by its check going critical.
    apply(&store, 14, node_check("n1", HealthStatus::Critical));
    let tables = store.snapshot();
    assert!(tables.session("a").is_none());
    assert_eq!(tables.kv_get("other").unwrap().session, "");
    assert_eq!(tables.kv_get("other").unwrap().value, b"held");
    assert!(store.lock_delay_remaining("other").is_some());
}

fn proxy(id: &str, destination: &str) -> Service {
    Service {
        kind: "connect-proxy".into(),
        proxy: Some(crate::types::connect::ServiceProxy {
            destination_service_name: destination.into(),
            ..Default::default()
        }),
        ..service(id, &format!("{destination}-sidecar-proxy"))
    }
}

fn connect_ids(tables: &Tables, name: &str) -> Vec<String> {
    tables
        .connect_nodes(name)
        .map(|(node, service)| format!("{}/{}", node.name, service.id))
        .collect()
}

#[test]
fn connect_instances_follow_proxies_and_native_services_through_every_change() {
    let store = Store::new();
    apply(&store, 2, register("n1", Some(proxy("p1", "api"))));
    apply(&store, 3, register("n2", Some(proxy("p2", "api"))));
    let native = Service {
        connect_native: true,
        ..service("api-native", "api")
    };
    apply(&store, 4, register("n1", Some(native)));
    apply(&store, 5, register("n1", Some(service("api-plain", "api"))));
    assert_eq!(
        connect_ids(&store.snapshot(), "api"),
        ["n1/api-native", "n1/p1", "n2/p2"]
    );

    // A proxy re-registered for another destination moves; deregistering removes.
    apply(&store, 6, register("n2", Some(proxy("p2", "web"))));
    apply(
        &store,
        7,
        Command::CatalogDeregister(DeregisterRequest {
            node: "n1".into(),
            service_id: Some("api-native".into()),
            check_id: None,
        }),
    );
    let tables = store.snapshot();
    assert_eq!(connect_ids(&tables, "api"), ["n1/p1"]);
    assert_eq!(connect_ids(&tables, "web"), ["n2/p2"]);

    // The index is not encoded, so a restore must rebuild it.
    let restored = Store::new();
    restored
        .restore(&Store::encode(&tables).unwrap())
        .expect("restore");
    assert_eq!(connect_ids(&restored.snapshot(), "api"), ["n1/p1"]);
    assert_eq!(connect_ids(&restored.snapshot(), "web"), ["n2/p2"]);

    apply(
        &store,
        8,
        Command::CatalogDeregister(DeregisterRequest {
            node: "n1".into(),
            service_id: None,
            check_id: None,
        }),
    );
    assert!(connect_ids(&store.snapshot(), "api").is_empty());
}

#[test]
fn a_live_nodes_name_is_reserved_against_another_node_id() {
    let store = Store::new();
    let with_id = |id: &str, address: &str, serf: Option<HealthStatus>| {
        let mut node = node("c1");
        node.id = id.into();
        node.address = address.into();
        let checks = serf
            .map(|status| Check {
                node: "c1".into(),
                check_id: "serfHealth".into(),
                name: "Serf Health Status".into(),
                status,
                notes: String::new(),
                output: String::new(),
                service_id: String::new(),
                service_name: String::new(),
                service_tags: Vec::new(),
                check_type: String::new(),
                interval: String::new(),
                timeout: String::new(),
                indexes: RaftIndexes::default(),
            })
            .into_iter()
            .collect();
        Command::CatalogRegister(Box::new(RegisterRequest {
            node,
            skip_node_update: false,
            service: None,
            checks,
        }))
    };
    let ok = |result: CommandResult| matches!(result, CommandResult::Catalog(Ok(())));
    assert!(ok(apply(
        &store,
        1,
        with_id("id-a", "10.0.0.1", Some(HealthStatus::Passing))
    )));
    let refused = apply(&store, 2, with_id("id-b", "10.0.0.9", None));
    let CommandResult::Catalog(Err(error)) = refused else {
        panic!("{refused:?}");
    };
    assert_eq!(
        error.to_string(),
        "Node name c1 is reserved by node id-a with name c1 (10.0.0.1)"
    );
    assert_eq!(store.snapshot().node("c1").unwrap().id, "id-a");
    // Once the holder is known to have failed, the name may be taken over.
    assert!(ok(apply(
        &store,
        3,
        with_id("id-a", "10.0.0.1", Some(HealthStatus::Critical))
    )));
    assert!(ok(apply(&store, 4, with_id("id-b", "10.0.0.9", None))));
    assert_eq!(store.snapshot().node("c1").unwrap().id, "id-b");
}

#[test]
fn coordinates_follow_their_nodes_and_survive_snapshots_of_both_formats() {
    use crate::types::coordinate::{Coordinate, NodeCoordinate};
    let store = Store::new();
    apply(&store, 1, register("n1", None));
    let mut coord = Coordinate::default();
    coord.vec[0] = 0.002;
    let update = |node: &str, coord: &Coordinate| {
        Command::CoordinateBatchUpdate(vec![NodeCoordinate {
            node: node.into(),
            coord: coord.clone(),
        }])
    };
    apply(&store, 2, update("n1", &coord));
    apply(&store, 3, update("ghost", &coord));
    let mut broken = coord.clone();
    broken.error = f64::NAN;
    apply(&store, 4, update("n1", &broken));
    let tables = store.snapshot();
    assert_eq!(tables.coordinate("n1"), Some(&coord));
    assert!(
        tables.coordinate("ghost").is_none(),
        "unknown nodes are skipped"
    );
    assert_eq!(tables.coordinates_index(), 2);

    let bytes = Store::encode(&tables).unwrap();
    let restored = Store::new();
    restored.restore(&bytes).expect("restore");
    assert_eq!(restored.snapshot().coordinate("n1"), Some(&coord));
    assert_eq!(Store::encode(&restored.snapshot()).unwrap(), bytes);
    // A snapshot written before coordinates existed (format 2) still restores.
    let mut old = vec![2u8];
    old.extend(shape::with_shape(shape::Shape::V1, || bincode::serialize(&*tables)).unwrap());
    let from_old = Store::new();
    from_old.restore(&old).expect("format 2");
    assert!(from_old.snapshot().node("n1").is_some());
    assert!(from_old.snapshot().coordinate("n1").is_none());

    apply(
        &store,
        5,
        Command::CatalogDeregister(DeregisterRequest {
            node: "n1".into(),
            service_id: None,
            check_id: None,
        }),
    );
    assert!(store.snapshot().coordinate("n1").is_none());
    assert_eq!(store.snapshot().coordinates_index(), 5);
}

/// A key is held once: the map's key and the entry's are one allocation, after a write, an
/// overwrite, and a restore from a snapshot (which decodes them apart).
#[test]
fn a_kv_key_is_stored_once() {
    let store = Store::new();
    apply(&store, 1, set("shared/key", "v1"));
    apply(&store, 2, set("shared/key", "v2"));
    let shared = |tables: &Tables| {
        tables
            .kv
            .iter()
            .all(|(key, entry)| Arc::ptr_eq(key, &entry.key))
    };
    assert!(shared(&store.snapshot()));
    let restored = Store::new();
    restored
        .restore(&Store::encode(&store.snapshot()).unwrap())
        .expect("restore");
    assert_eq!(restored.snapshot().kv.len(), 1);
    assert!(shared(&restored.snapshot()));
}

#[test]
fn autopilot_configuration_is_compare_and_set_and_survives_snapshots_of_every_format() {
    use crate::types::operator::AutopilotConfig;
    let store = Store::new();
    let seed = AutopilotConfig::default();
    let set = |config: &AutopilotConfig, cas| Command::AutopilotSetConfig {
        config: config.clone(),
        cas,
    };
    assert_eq!(
        apply(&store, 3, set(&seed, Some(0))),
        CommandResult::Cas(true)
    );
    // Seeding again (a second leader taking office) changes nothing.
    let other = AutopilotConfig {
        min_quorum: 3,
        ..AutopilotConfig::default()
    };
    assert_eq!(
        apply(&store, 4, set(&other, Some(0))),
        CommandResult::Cas(false)
    );
    assert_eq!(
        apply(&store, 5, set(&other, Some(4))),
        CommandResult::Cas(false)
    );
    assert_eq!(
        apply(&store, 6, set(&other, Some(3))),
        CommandResult::Cas(true)
    );
    let stored = store.snapshot().autopilot().cloned().expect("stored");
    assert_eq!(stored.min_quorum, 3);
    assert_eq!((stored.indexes.create, stored.indexes.modify), (3, 6));
    assert_eq!(apply(&store, 7, set(&seed, None)), CommandResult::Cas(true));

    let tables = store.snapshot();
    let bytes = Store::encode(&tables).unwrap();
    let restored = Store::new();
    restored.restore(&bytes).expect("restore");
    assert_eq!(restored.snapshot().autopilot(), tables.autopilot());
    // A snapshot written before the autopilot section existed (format 3) still restores,
    // without one.
    let mut old = bytes.clone();
    old[0] = 3;
    let autopilot_len = bincode::serialized_size(&Some(AutopilotConfig::default())).unwrap();
    old.truncate(old.len() - autopilot_len as usize);
    let from_old = Store::new();
    from_old.restore(&old).expect("format 3");
    assert!(from_old.snapshot().autopilot().is_none());
}

#[test]
fn acl_tables_check_ids_names_and_bootstrap_and_survive_snapshots() {
    use crate::types::acl::{AclOp, Policy, Token};
    let store = Store::new();
    let token = |accessor: &str, secret: &str| Token {
        accessor_id: accessor.into(),
        secret_id: secret.into(),
        ..Token::default()
    };
    let acl = |op| Command::Acl(op);
    let bootstrap = |reset_index| {
        acl(AclOp::Bootstrap {
            token: Box::new(token("a1", "s1")),
            reset_index,
        })
    };
    assert_eq!(apply(&store, 3, bootstrap(0)), CommandResult::Cas(true));
    assert_eq!(store.snapshot().acl_bootstrap_index(), 3);
    // Once done, only the right reset index bootstraps again.
    assert_eq!(
        apply(&store, 4, bootstrap(0)),
        CommandResult::Error(ApplyError::AclBootstrapDone(3))
    );
    let second = acl(AclOp::Bootstrap {
        token: Box::new(token("a2", "s2")),
        reset_index: 3,
    });
    assert_eq!(apply(&store, 5, second), CommandResult::Cas(true));
    // A secret another token holds is refused; create-only refuses a taken accessor.
    let taken_secret = acl(AclOp::TokenSet {
        token: Box::new(token("a3", "s1")),
        cas: Some(0),
    });
    assert_eq!(
        apply(&store, 6, taken_secret),
        CommandResult::Error(ApplyError::AclTokenIdInUse("SecretID".into()))
    );
    let taken_accessor = acl(AclOp::TokenSet {
        token: Box::new(token("a1", "s9")),
        cas: Some(0),
    });
    assert_eq!(apply(&store, 7, taken_accessor), CommandResult::Cas(false));
    let policy = |id: &str, name: &str| {
        acl(AclOp::PolicySet {
            policy: Box::new(Policy {
                id: id.into(),
                name: name.into(),
                ..Policy::default()
            }),
            cas: None,
        })
    };
    assert_eq!(
        apply(&store, 8, policy("p1", "ops")),
        CommandResult::Cas(true)
    );
    assert_eq!(
        apply(&store, 9, policy("p2", "ops")),
        CommandResult::Error(ApplyError::AclNameInUse {
            kind: "Policy".into(),
            name: "ops".into()
        })
    );
    let tables = store.snapshot();
    assert_eq!(
        tables
            .acl_token_by_secret("s2")
            .map(|t| t.accessor_id.as_str()),
        Some("a2")
    );
    assert_eq!(
        tables.acl_policy_by_name("ops").map(|p| p.indexes.create),
        Some(8)
    );
    assert_eq!(tables.acl_index(), 8, "refused writes change nothing");

    let bytes = Store::encode(&tables).unwrap();
    let restored = Store::new();
    restored.restore(&bytes).expect("restore");
    let copy = restored.snapshot();
    assert_eq!(copy.acl_bootstrap_index(), 5);
    assert_eq!(
        copy.acl_token_by_secret("s1")
            .map(|t| t.accessor_id.as_str()),
        Some("a1")
    );
    assert_eq!(copy.acl_policies().count(), 1);
    // A format 4 snapshot (before the ACL section) restores with empty ACL tables.
    let mut old = bytes.clone();
    old[0] = 4;
    let acl_len = bincode::serialized_size(&tables.acl).unwrap();
    old.truncate(old.len() - acl_len as usize);
    let from_old = Store::new();
    from_old.restore(&old).expect("format 4");
    assert!(from_old.snapshot().acl_token_by_secret("s1").is_none());
    assert_eq!(from_old.snapshot().acl_bootstrap_index(), 0);
}

fn prepared(
    id: &str,
    name: &str,
    template: &str,
    service: &str,
) -> crate::types::query::PreparedQuery {
    crate::types::query::PreparedQuery {
        id: id.into(),
        name: name.into(),
        template: crate::types::query::QueryTemplate {
            kind: template.into(),
            ..Default::default()
        },
        service: crate::types::query::ServiceQuery {
            service: service.into(),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn set_query(query: crate::types::query::PreparedQuery) -> Command {
    Command::PreparedQuery(crate::types::query::QueryOp::Set(Box::new(query)))
}

#[test]
fn prepared_queries_keep_consuls_rules_resolve_by_id_name_then_prefix_and_survive_snapshots() {
    use super::query::{resolve, ResolveError};
    use crate::types::query::NAME_PREFIX_MATCH;
    let store = Store::new();
    assert_eq!(
        apply(&store, 2, set_query(prepared("q1", "web", "", "web"))),
        CommandResult::Done
    );
    let refusals = [
        (
            prepared("q2", "web", "", "x"),
            "name 'web' aliases an existing query name",
        ),
        (
            prepared("q2", "q1", "", "x"),
            "name 'q1' aliases an existing query ID",
        ),
        (
            crate::types::query::PreparedQuery {
                session: "gone".into(),
                ..prepared("q2", "other", "", "x")
            },
            "invalid session \"gone\"",
        ),
    ];
    for (query, text) in refusals {
        match apply(&store, 3, set_query(query)) {
            CommandResult::Error(error) => assert_eq!(error.to_string(), text),
            other => panic!("{text}: {other:?}"),
        }
    }
    apply(
        &store,
        4,
        set_query(prepared("t0", "", NAME_PREFIX_MATCH, "${name.suffix}")),
    );
    match apply(
        &store,
        5,
        set_query(prepared("t1", "", NAME_PREFIX_MATCH, "x")),
    ) {
        CommandResult::Error(error) => {
            assert_eq!(
                error.to_string(),
                "a query template with an empty name already exists"
            )
        }
        other => panic!("{other:?}"),
    }
    apply(
        &store,
        6,
        set_query(prepared(
            "t2",
            "db-",
            NAME_PREFIX_MATCH,
            "${name.suffix}-primary",
        )),
    );
    let tables = store.snapshot();
    let service_of = |name: &str| {
        resolve(&tables, name)
            .unwrap()
            .map(|query| query.service.service)
    };
    assert_eq!(service_of("q1").as_deref(), Some("web"), "by ID");
    assert_eq!(
        service_of("web").as_deref(),
        Some("web"),
        "by name, before any template"
    );
    assert_eq!(
        service_of("db-orders").as_deref(),
        Some("orders-primary"),
        "the longest prefix"
    );
    assert_eq!(
        service_of("cache").as_deref(),
        Some("cache"),
        "the catch-all"
    );
    assert_eq!(resolve(&tables, "t2"), Err(ResolveError::TemplateById));
    assert_eq!(tables.prepared_query("t2").unwrap().indexes.create, 6);

    let restored = Store::new();
    restored
        .restore(&Store::encode(&tables).unwrap())
        .expect("restore");
    assert_eq!(restored.snapshot().prepared_queries().count(), 3);
    assert_eq!(restored.snapshot().queries_index(), 6);
}

#[test]
fn failover_targets_take_the_nearest_n_known_then_the_listed_datacenters_once_never_local() {
    use super::query::{failover_targets, fails_over};
    let known: Vec<String> = ["dc1", "dc2", "dc3", "dc4"].map(String::from).to_vec();
    let mut query = prepared("q", "web", "", "web");
    assert!(!fails_over(&query));
    assert!(failover_targets(&query, "dc1", &known).is_empty());
    query.service.nearest_n = 2;
    assert!(fails_over(&query));
    assert_eq!(failover_targets(&query, "dc1", &known), ["dc2", "dc3"]);
    // The listed ones follow, without repeating a nearest one or naming this datacenter.
    query.service.datacenters = ["dc3", "dc1", "dc9"].map(String::from).to_vec();
    assert_eq!(
        failover_targets(&query, "dc1", &known),
        ["dc2", "dc3", "dc9"]
    );
    query.service.nearest_n = 0;
    assert_eq!(
        failover_targets(&query, "dc2", &known),
        ["dc3", "dc1", "dc9"]
    );
}
