domain     = "Mesh.Internal"
alt_domain = "consul"
recursors  = ["10.0.0.53", "10.0.0.54:5353"]
addresses {
  dns = "127.0.0.1"
}
dns_config {
  allow_stale       = true
  max_stale         = "10s"
  node_ttl          = "30s"
  service_ttl       = { "*" = "5s", "web*" = "10s", "web" = "15s" }
  udp_answer_limit  = 20
  a_record_limit    = 4
  enable_truncate   = true
  only_passing      = true
  recursor_timeout  = "500ms"
  recursor_strategy = "random"
  soa {
    refresh = 60
  }
}
limits {
  dns_tcp_idle_timeout    = "3s"
  dns_max_tcp_connections = 64
}
