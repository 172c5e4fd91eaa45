ports {
  http = 9500
  grpc = 9502
}
node_meta {
  zone = "a"
}
performance {
  raft_multiplier = 2
}
autopilot {
  min_quorum             = 3
  last_contact_threshold = "300ms"
  cleanup_dead_servers   = false
}
max_query_time = "2m"
locality {
  region = "us-east-1"
  zone   = "us-east-1a"
}
retry_join_wan     = ["10.9.0.1"]
retry_interval_wan = "15s"
