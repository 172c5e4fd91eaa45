//! Config loading: the merge order, flags winning, warnings for unknown keys, validation
//! errors, and a golden file of a full configuration.

use std::path::Path;

use serde_json::json;

use super::*;

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/config/testdata")
        .join(name)
}

fn full_options() -> LoadOptions {
    LoadOptions {
        dev: false,
        paths: vec![ConfigPath::Dir(testdata("dir"))],
        hcl_fragments: vec!["log_level = \"warn\"".into()],
        format: None,
        flags: json!({"node_name": "from-flag", "client_addr": "127.0.0.1 ::1"}),
    }
}

#[test]
fn full_config_matches_golden_file() {
    let loaded = load(&full_options()).expect("load");
    let rendered = serde_json::to_string_pretty(&loaded.config).expect("render") + "\n";
    let golden_path = testdata("full.golden.json");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden_path, &rendered).expect("write golden");
    }
    let golden = std::fs::read_to_string(&golden_path).expect("golden file exists");
    assert_eq!(
        rendered, golden,
        "runtime config changed; rerun with UPDATE_GOLDEN=1 if intended"
    );
}

#[test]
fn later_files_and_flags_win_and_maps_merge() {
    let config = load(&full_options()).expect("load").config;
    assert_eq!(config.ports.http, Some(9500)); // 20-override.hcl beats 10-base.json
    assert_eq!(config.ports.dns, None); // -1 disables
    assert_eq!(config.node_name, "from-flag");
    assert_eq!(config.node_meta.len(), 2);
    assert_eq!(config.log_level, "warn");
    assert_eq!(config.query.max_query_time, Duration::from_secs(120));
    assert_eq!(config.limits.kv_max_value_size, 1024 * 1024);
    assert_eq!(config.dns.domain, "mesh.internal.");
    assert_eq!(config.dns.alt_domain.as_deref(), Some("consul."));
    assert_eq!(config.dns.udp_answer_limit, 8); // Consul's hard cap
    assert_eq!(config.dns.service_ttl("web-1"), Duration::from_secs(10));
    assert_eq!(config.dns.recursors.len(), 2);
    assert_eq!(config.limits.dns_max_tcp_connections, 64);
}

#[test]
fn unknown_keys_are_warnings_naming_file_and_key() {
    let warnings = load(&full_options()).expect("load").warnings;
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("10-base.json") && w.contains("unknown_thing")),
        "{warnings:?}"
    );
}

#[test]
fn dev_mode_needs_no_data_dir_and_uses_consul_dev_ports() {
    let config = load(&LoadOptions {
        dev: true,
        ..LoadOptions::default()
    })
    .expect("load")
    .config;
    assert!(config.dev_mode && config.server_mode);
    assert_eq!(config.bootstrap_expect, 1);
    assert_eq!(config.ports.http, Some(8500));
    assert_eq!(config.ports.dns, Some(8600));
    assert_eq!(config.ports.grpc, Some(8502));
    assert_eq!(config.raft.multiplier, 1);
}

#[test]
fn the_ui_is_on_in_dev_mode_and_its_content_path_gets_consuls_slashes() {
    let load_with = |dev: bool, hcl: &str| {
        load(&LoadOptions {
            dev,
            hcl_fragments: vec![hcl.to_string()],
            flags: json!({"data_dir": "/tmp/concord-ui-config"}),
            ..LoadOptions::default()
        })
        .expect("load")
        .config
    };
    let dev = load_with(true, "");
    assert!(dev.ui_enabled);
    assert_eq!(dev.ui_content_path, "/ui/");
    assert!(!load_with(false, "").ui_enabled);
    for (given, expected) in [("console", "/console/"), ("/a/b", "/a/b/"), ("/", "/")] {
        let config = load_with(
            false,
            &format!("ui_config {{\n enabled = true\n content_path = \"{given}\"\n dir = \"/srv/ui\"\n}}"),
        );
        assert!(config.ui_enabled);
        assert_eq!(config.ui_content_path, expected);
        assert_eq!(
            config.ui_dir.as_deref(),
            Some(std::path::Path::new("/srv/ui"))
        );
    }
}

#[test]
fn invalid_values_are_errors_naming_the_key() {
    let cases = [
        (
            json!({"data_dir": "/x", "ports": {"http": 70000}}),
            "ports.http",
        ),
        (
            json!({"data_dir": "/x", "datacenter": "East"}),
            "datacenter",
        ),
        (
            json!({"data_dir": "/x", "max_query_time": "soon"}),
            "max_query_time",
        ),
        (
            json!({"data_dir": "/x", "bind_addr": "nowhere"}),
            "bind_addr",
        ),
        (
            json!({"data_dir": "/x", "limits": {"kv_max_value_size": 0}}),
            "kv_max_value_size",
        ),
        (json!({}), "data_dir"),
        (
            json!({"data_dir": "/x", "recursors": ["dns.example"]}),
            "recursors",
        ),
        (
            json!({"data_dir": "/x", "dns_config": {"recursor_strategy": "fastest"}}),
            "recursor_strategy",
        ),
        (
            json!({"data_dir": "/x", "dns_config": {"service_ttl": {"*": "often"}}}),
            "service_ttl",
        ),
        (json!({"data_dir": "/x", "domain": "a..b"}), "domain"),
        (
            json!({"data_dir": "/x", "addresses": {"dns": "here"}}),
            "addresses.dns",
        ),
        (
            json!({"data_dir": "/x", "locality": {"zone": "us-east-1a"}}),
            "locality is invalid: zone cannot be set without region",
        ),
    ];
    for (flags, key) in cases {
        let error = load(&LoadOptions {
            flags: flags.clone(),
            ..LoadOptions::default()
        })
        .err()
        .unwrap_or_else(|| panic!("{flags} loaded"))
        .to_string();
        assert!(error.contains(key), "{error} should name {key}");
    }
}

#[test]
fn wrong_types_name_the_source() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.json");
    std::fs::write(&file, r#"{"server": "yes", "data_dir": "/x"}"#).expect("write");
    let error = load(&LoadOptions {
        paths: vec![ConfigPath::File(file)],
        ..LoadOptions::default()
    })
    .err()
    .expect("type error")
    .to_string();
    assert!(error.contains("bad.json"), "{error}");
}

#[test]
fn shipped_examples_load_cleanly_and_agree() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let load_one = |name: &str| {
        load(&LoadOptions {
            paths: vec![ConfigPath::File(examples.join(name))],
            ..LoadOptions::default()
        })
        .unwrap_or_else(|error| panic!("{name}: {error}"))
    };
    let hcl = load_one("server.hcl");
    let json = load_one("server.json");
    assert!(hcl.warnings.is_empty(), "{:?}", hcl.warnings);
    assert!(json.warnings.is_empty(), "{:?}", json.warnings);
    assert_eq!(hcl.config, json.config);
    assert!(hcl.config.server_mode);
    assert_eq!(hcl.config.bootstrap_expect, 1);
}

#[test]
fn service_and_check_definitions_append_across_files_and_errors_name_file_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("a.json"),
        r#"{"data_dir": "/x", "service": {"name": "web", "port": 80, "check": {"ttl": "10s"}}}"#,
    )
    .expect("write");
    std::fs::write(
        dir.path().join("b.hcl"),
        "service {\n  name = \"db\"\n  port = 5432\n}\ncheck {\n  name = \"disk\"\n  ttl = \"1m\"\n}\n",
    )
    .expect("write");
    let config = load(&LoadOptions {
        paths: vec![ConfigPath::Dir(dir.path().to_path_buf())],
        ..LoadOptions::default()
    })
    .expect("load")
    .config;
    let names: Vec<&str> = config
        .services
        .iter()
        .map(|s| s.service.name.as_str())
        .collect();
    assert_eq!(names, ["web", "db"]);
    assert_eq!(config.services[0].checks[0].id, "service:web");
    assert_eq!(config.checks[0].id, "disk");

    std::fs::write(
        dir.path().join("c.json"),
        r#"{"services": [{"name": "ok"}, {"name": "bad", "check": {"http": "http://x"}}]}"#,
    )
    .expect("write");
    let error = load(&LoadOptions {
        paths: vec![ConfigPath::Dir(dir.path().to_path_buf())],
        ..LoadOptions::default()
    })
    .err()
    .expect("invalid check")
    .to_string();
    assert!(
        error.contains("c.json") && error.contains("services[1]") && error.contains("Interval"),
        "{error}"
    );
}

const PRIVATE_KEY_PEM: &str =
    "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBfakefakefake\n-----END EC PRIVATE KEY-----\n";

#[test]
fn debug_config_hides_configured_secrets_and_shows_the_rest() {
    let fragment = format!(
        r#"
        node_meta {{
          rack      = "r1"
          api_token = "meta-s3cret"
        }}
        connect {{
          ca_config {{
            private_key_type = "ec"
            private_key_bits = 384
          }}
        }}
        config_entries {{
          bootstrap = [{{
            kind   = "proxy-defaults"
            name   = "global"
            config = {{
              protocol        = "http"
              upstream_password = "entry-s3cret"
              client_bundle = {PRIVATE_KEY_PEM:?}
            }}
          }}]
        }}
        "#
    );
    let config = load(&LoadOptions {
        dev: true,
        hcl_fragments: vec![fragment],
        ..LoadOptions::default()
    })
    .expect("load")
    .config;
    let debug = redact::debug_config(&config);
    let text = debug.to_string();
    for secret in ["meta-s3cret", "entry-s3cret", "PRIVATE KEY", "MHcCAQEE"] {
        assert!(!text.contains(secret), "{secret} shows in {text}");
    }
    assert_eq!(debug["NodeMeta"]["api_token"], redact::HIDDEN);
    assert_eq!(debug["NodeMeta"]["rack"], "r1");
    assert_eq!(debug["Datacenter"], "dc1");
    assert_eq!(debug["CaConfig"]["PrivateKeyType"], "ec");
    assert_eq!(debug["CaConfig"]["PrivateKeyBits"], 384);
    let bootstrap = &debug["ConfigEntriesBootstrap"][0]["Config"];
    assert_eq!(bootstrap["protocol"], "http");
    assert_eq!(bootstrap["upstream_password"], redact::HIDDEN);
    // Everything else is the runtime config as it is.
    let mut unredacted = serde_json::to_value(&config).unwrap();
    unredacted["NodeMeta"]["api_token"] = redact::HIDDEN.into();
    unredacted["ConfigEntriesBootstrap"][0]["Config"]["upstream_password"] = redact::HIDDEN.into();
    unredacted["ConfigEntriesBootstrap"][0]["Config"]["client_bundle"] = redact::HIDDEN.into();
    assert_eq!(debug, unredacted);
}

#[test]
fn a_ca_private_key_in_config_is_refused_without_echoing_it() {
    let fragment =
        format!("connect {{\n  ca_config {{\n    private_key = {PRIVATE_KEY_PEM:?}\n  }}\n}}\n");
    let error = load(&LoadOptions {
        dev: true,
        hcl_fragments: vec![fragment],
        ..LoadOptions::default()
    })
    .err()
    .expect("refused")
    .to_string();
    assert!(error.contains("PrivateKey is not supported"), "{error}");
    assert!(!error.contains("PRIVATE KEY-----"), "{error}");
}

fn tls_of(flags: serde_json::Value) -> Result<crate::tls::TlsConfig, String> {
    load(&LoadOptions {
        flags,
        ..LoadOptions::default()
    })
    .map(|loaded| loaded.config.tls)
    .map_err(|error| error.to_string())
}

#[test]
fn tls_sub_stanzas_inherit_defaults_and_deprecated_keys_map_onto_them() {
    let tls = tls_of(json!({
        "data_dir": "/x",
        "ca_file": "/old/ca.pem",
        "cert_file": "/old/cert.pem",
        "key_file": "/old/key.pem",
        "verify_incoming": true,
        "verify_incoming_https": false,
        "tls_min_version": "tls13",
        "tls": {
            "defaults": {"cert_file": "/new/cert.pem"},
            "https": {"ca_file": "/https/ca.pem"},
        },
    }))
    .expect("loads");
    // The stanza wins over the flat key; each unset field comes from defaults.
    assert_eq!(
        tls.internal_rpc.cert_file.as_deref(),
        Some(Path::new("/new/cert.pem"))
    );
    assert_eq!(
        tls.internal_rpc.key_file.as_deref(),
        Some(Path::new("/old/key.pem"))
    );
    assert_eq!(
        tls.https.ca_file.as_deref(),
        Some(Path::new("/https/ca.pem"))
    );
    assert_eq!(tls.grpc.ca_file.as_deref(), Some(Path::new("/old/ca.pem")));
    assert_eq!(tls.grpc.tls_min_version, crate::tls::TlsVersion::V1_3);
    // The flat verify_incoming reaches the server port but, as before Consul 1.12, not gRPC;
    // verify_incoming_https turns it off for HTTPS.
    assert!(tls.internal_rpc.verify_incoming);
    assert!(!tls.grpc.verify_incoming);
    assert!(!tls.https.verify_incoming);
    // No verify_outgoing anywhere: plaintext to servers.
    assert!(!tls.internal_rpc.verify_outgoing);
}

#[test]
fn verify_server_hostname_turns_on_verify_outgoing() {
    let tls = tls_of(json!({
        "data_dir": "/x",
        "tls": {"internal_rpc": {"verify_server_hostname": true}},
    }))
    .expect("loads");
    assert!(tls.internal_rpc.verify_server_hostname);
    assert!(tls.internal_rpc.verify_outgoing);
}

#[test]
fn misplaced_tls_keys_are_consuls_errors() {
    let cases = [
        (
            json!({"tls": {"grpc": {"verify_outgoing": true}}}),
            "verify_outgoing is not valid in the tls.grpc stanza",
        ),
        (
            json!({"tls": {"https": {"verify_server_hostname": true}}}),
            "verify_server_hostname is only valid in the tls.defaults and tls.internal_rpc stanzas",
        ),
        (
            json!({"tls": {"defaults": {"use_auto_cert": true}}}),
            "use_auto_cert is only valid in the tls.grpc stanza",
        ),
        (
            json!({"tls": {"defaults": {"tls_min_version": "SSLv3"}}}),
            "tls.internal_rpc.tls_min_version: invalid value \"SSLv3\"",
        ),
        (
            json!({"tls": {"defaults": {"tls_min_version": "TLSv1_3",
                "tls_cipher_suites": "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"}}}),
            "cipher suites are not configurable",
        ),
        (
            json!({"ports": {"grpc": 8502, "grpc_tls": -1},
                "tls": {"grpc": {"cert_file": "/c.pem", "key_file": "/k.pem"}}}),
            "Use `ports.grpc_tls` instead",
        ),
        (
            json!({"server": true, "auto_encrypt": {"tls": true}}),
            "auto_encrypt.tls can only be used on client agents",
        ),
    ];
    for (mut flags, expected) in cases {
        flags["data_dir"] = json!("/x");
        let error = tls_of(flags.clone()).expect_err(&flags.to_string());
        assert!(error.contains(expected), "{error} should say {expected}");
    }
}

#[test]
fn grpc_tls_listens_on_8503_once_grpc_has_a_certificate() {
    let load_ports = |flags: serde_json::Value| {
        load(&LoadOptions {
            flags,
            ..LoadOptions::default()
        })
        .expect("loads")
        .config
        .ports
    };
    let plain = load_ports(json!({"data_dir": "/x"}));
    assert_eq!((plain.https, plain.grpc_tls), (None, None));
    let tls = load_ports(json!({"data_dir": "/x", "ports": {"https": 8501},
        "tls": {"defaults": {"cert_file": "/c.pem", "key_file": "/k.pem"}}}));
    assert_eq!((tls.https, tls.grpc_tls), (Some(8501), Some(8503)));
}
