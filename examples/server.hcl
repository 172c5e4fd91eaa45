# A single concord server that bootstraps its own cluster and keeps its state in /var/lib/concord.
#   concord agent -config-file examples/server.hcl
datacenter       = "dc1"
data_dir         = "/var/lib/concord"
node_name        = "server-1"
server           = true
bootstrap_expect = 1
bind_addr        = "127.0.0.1"
client_addr      = "127.0.0.1"

ports {
  http = 8500
}

limits {
  # Consul's default; raise it if you store large values (pain point: Terraform state).
  kv_max_value_size = 524288
}
