connect {
  enabled = true
  ca_provider = "consul"
  ca_config {
    leaf_cert_ttl = "24h"
    csr_max_per_second = 100
  }
}
default_intention_policy = "deny"
ports {
  sidecar_min_port = 22000
  sidecar_max_port = 22100
}
config_entries {
  bootstrap = [
    { kind = "proxy-defaults", name = "global", config = { protocol = "http" } },
  ]
}
