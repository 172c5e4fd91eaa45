//! Connect benchmarks (issue 4): leaf CSR signing throughput on one core, and deciding an
//! intention for a destination with 10,000 intentions.
//!
//! Run: `cargo bench --bench connect`. In-process, single-threaded: the figures are the CA's
//! and the intention index's own cost, with no HTTP in front.

// Shared by every bench; this one reports no latency in milliseconds, so parts go unused.
#[allow(dead_code)]
#[path = "common/mod.rs"]
mod common;

use std::time::{Duration, Instant, SystemTime};

use common::{Stats, Table};
use concord::connect::ca::{self, KeyType, Signer};
use concord::connect::intention::{self, DefaultPolicy};
use concord::state::Store;
use concord::types::Command;
use serde_json::json;

const TRUST_DOMAIN: &str = "11111111-2222-3333-4444-555555555555.consul";

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

/// Signs `count` pre-made CSRs with one signer on this thread; returns signatures per second.
fn signing_rate(key: KeyType, count: usize) -> f64 {
    let now = SystemTime::now();
    let root = ca::generate_root(TRUST_DOMAIN, 1, key, Duration::from_secs(87600 * 3600), now)
        .expect("root");
    let signer = Signer::new(&root).expect("signer");
    let uri = ca::spiffe_service_id(TRUST_DOMAIN, "dc1", "web");
    let csrs: Vec<String> = (0..count)
        .map(|_| ca::leaf_key_and_csr(&uri, "web").expect("csr").csr_pem)
        .collect();
    let started = Instant::now();
    for (serial, csr) in csrs.iter().enumerate() {
        signer
            .sign(
                csr,
                TRUST_DOMAIN,
                serial as u64 + 1,
                Duration::from_secs(72 * 3600),
                now,
            )
            .expect("signed");
    }
    count as f64 / started.elapsed().as_secs_f64()
}

/// Agent-side key + CSR generation per second.
fn csr_rate(count: usize) -> f64 {
    let uri = ca::spiffe_service_id(TRUST_DOMAIN, "dc1", "web");
    let started = Instant::now();
    for _ in 0..count {
        ca::leaf_key_and_csr(&uri, "web").expect("csr");
    }
    count as f64 / started.elapsed().as_secs_f64()
}

fn store_with_intentions(count: usize) -> Store {
    let store = Store::new();
    let sources: Vec<serde_json::Value> = (0..count)
        .map(|i| json!({"Name": format!("svc-{i}"), "Action": if i % 2 == 0 { "allow" } else { "deny" }}))
        .collect();
    for (index, (name, sources)) in [
        ("db", json!(sources)),
        ("*", json!([{"Name": "*", "Action": "deny"}])),
    ]
    .into_iter()
    .enumerate()
    {
        let entry = json!({"Kind": "service-intentions", "Name": name, "Sources": sources});
        let entry = concord::connect::entry::decode(entry.as_object().expect("object").clone())
            .expect("valid entry");
        let command = Command::ConfigEntrySet {
            entry: Box::new(entry),
            cas: None,
        };
        store.apply_batch([(index as u64 + 1, Some(&command))]);
    }
    store
}

fn main() {
    common::print_machine(
        "in-process (no agent)",
        "this bench, single thread",
        "signatures/s; microseconds",
    );
    let mut table = Table::default();

    let p256 = signing_rate(KeyType::Ec256, 5_000);
    table.row(
        "leaf CSR signing, EC P-256 root, 1 core",
        format!("{p256:.0}/s"),
        ">= 1,000/s",
        Some(p256 >= 1_000.0),
    );
    let p384 = signing_rate(KeyType::Ec384, 1_000);
    table.row(
        "leaf CSR signing, EC P-384 root, 1 core",
        format!("{p384:.0}/s"),
        "",
        None,
    );
    let csrs = csr_rate(5_000);
    table.row(
        "agent key + CSR generation",
        format!("{csrs:.0}/s"),
        "",
        None,
    );

    let store = store_with_intentions(10_000);
    let tables = store.snapshot();
    let policy = DefaultPolicy::Acl { allow: true };
    // Warm the typed view (parsed once per stored entry, on first use).
    intention::decide(&tables, "svc-1", "db", policy);
    let mut decide = Vec::with_capacity(20_000);
    for i in 0..20_000 {
        let source = format!("svc-{}", (i * 7919) % 12_000);
        let started = Instant::now();
        let decision = intention::decide(&tables, &source, "db", policy);
        decide.push(micros(started.elapsed()));
        std::hint::black_box(decision);
    }
    let decide = Stats::new(decide);
    table.row(
        "intention decision, 10,000 intentions on the destination, p99",
        format!("{:.2} µs (p50 {:.2})", decide.pct(0.99), decide.pct(0.5)),
        "<= 50 µs",
        Some(decide.pct(0.99) <= 50.0),
    );
    let mut listing = Vec::with_capacity(200);
    for _ in 0..200 {
        let started = Instant::now();
        let list = intention::match_destination(&tables, "db");
        listing.push(micros(started.elapsed()));
        std::hint::black_box(list);
    }
    let listing = Stats::new(listing);
    table.row(
        "intention match list (all 10,001, sorted), p50",
        format!("{:.0} µs (p99 {:.0})", listing.pct(0.5), listing.pct(0.99)),
        "",
        None,
    );
    table.print();
}
